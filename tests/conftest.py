"""Shared fixtures: a tiny real Qwen2 (2 layers, 1k vocab) with a tokenizer built here, settings
rooted in a temporary directory, and the real PostgreSQL/Redis services when they are up.

Services: a missing PostgreSQL or Redis skips the tests that need it, except under CI=true, where
it fails them (CI must exercise the real thing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from changjak.settings import Settings

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL = os.environ.get("CHANGJAK_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CHANGJAK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

KOREAN_CORPUS = [
    "안녕하세요. 오늘 날씨가 정말 좋네요.",
    "주인공은 비 내리는 골목에서 오래된 편지를 발견했다.",
    "이 영화는 우정과 배신에 관한 이야기입니다.",
    "소설의 첫 문장을 써 주세요: 바다는 조용했다.",
    "애니메이션 속 소녀는 하늘을 나는 고래를 따라갔다.",
    "드라마 시리즈의 다음 화 줄거리를 요약해 주세요.",
    "저는 커피보다 차를 더 좋아해요. 당신은요?",
    "system user assistant 창작 글쓰기 도우미 이야기 장면 인물 대사",
] * 4


def _require(service: str, reason: str) -> None:
    if CI:
        pytest.fail(f"{service} is required under CI=true but is not reachable: {reason}")
    pytest.skip(f"{service} not reachable: {reason}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Qwen2 with a 1,024-token byte-level BPE tokenizer and the ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny-qwen2")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(KOREAN_CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>", bos_token=None)
    hf_tok.chat_template = CHATML
    hf_tok.save_pretrained(out)

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=hf_tok.eos_token_id,
                         pad_token_id=hf_tok.pad_token_id, bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture
def make_settings(tmp_path: Path):
    """Settings rooted in tmp_path; keyword overrides are nested dicts like the YAML file."""

    def make(**overrides) -> Settings:
        overrides.setdefault("home", tmp_path / ".changjak")
        return Settings.load(**overrides)

    return make


@pytest.fixture
def tiny_settings(make_settings, tiny_model_dir: Path) -> Settings:
    """Settings for a few real training steps of the tiny model on CPU."""
    return make_settings(
        base_model={"source": str(tiny_model_dir)},
        train={"device": "cpu", "dtype": "fp32", "max_steps": 8, "batch_size": 2,
               "gradient_accumulation_steps": 1, "max_seq_length": 128, "learning_rate": 5e-3,
               "save_steps": 4, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        eval={"max_samples": 4, "max_new_tokens": 8, "batch_size": 4},
    )


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL (the real service)."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        _require("PostgreSQL", f"{PG_URL}: {e.__class__.__name__}")
    return PG_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis URL (the real service)."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as e:  # noqa: BLE001
        _require("Redis", f"{REDIS_URL}: {e.__class__.__name__}")
    return REDIS_URL
