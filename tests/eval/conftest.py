"""What `changjak train` leaves in MLflow, made in a second: the tiny Qwen2 wrapped with a random
(not zero-initialised) LoRA adapter, so the "fine-tuned" model really answers differently, logged
with the training stage's tags and ``adapter/`` artifact. Also a small prepared test split."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from changjak.settings import Settings

TEST_CHATS = [
    ("소설의 첫 문장을 써 주세요.", "바다는 조용했다."),
    ("주인공은 어디에 있나요?", "주인공은 비 내리는 골목에 있다."),
    ("이 영화는 무슨 이야기인가요?", "우정과 배신에 관한 이야기입니다."),
    ("애니메이션 장면을 써 주세요.", "소녀는 하늘을 나는 고래를 따라갔다."),
    ("커피를 좋아하세요?", "저는 커피보다 차를 더 좋아해요."),
]
SYSTEM = "당신은 한국어 창작을 돕는 글쓰기 도우미입니다."


@dataclass(frozen=True)
class FakeTrainingRun:
    run_id: str
    model: Any  # the in-memory PeftModel whose adapter was logged
    tokenizer: Any


def log_training_run(settings: Settings, *, seed: int, adapter: bool = True,
                     eval_passed: bool | None = None) -> FakeTrainingRun:
    """A finished MLflow run shaped like `changjak train`'s (and, if ``eval_passed`` is given, like
    `changjak eval` left it: the gate tag and a few ``eval.*`` metrics)."""
    import mlflow
    import torch
    from peft import LoraConfig, get_peft_model

    from changjak import base_model, tracking

    base = base_model.resolve(settings)
    tokenizer = base_model.load_tokenizer(base.path)
    torch.manual_seed(seed)
    model = get_peft_model(base_model.load_causal_lm(base.path, device="cpu", dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    tracking.configure(settings)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        mlflow.set_tags({"changjak.stage": "train", "changjak.base_model.source": base.source,
                         "changjak.base_model.sha256": base.sha256, "changjak.dataset.sha256": f"{seed:064x}"})
        if adapter:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            mlflow.log_artifacts(tmp, artifact_path="adapter")
        if eval_passed is not None:
            mlflow.set_tag("changjak.eval.passed", str(eval_passed).lower())
            mlflow.log_metrics({"eval.base.rougeL": 0.125, "eval.finetuned.perplexity": 12.5,
                                "eval.finetuned.rougeL": 0.25 if eval_passed else 0.0625})
    return FakeTrainingRun(run.info.run_id, model.eval(), tokenizer)


def write_test_split(data_dir: Path) -> Path:
    """A prepared data directory holding only test.jsonl, in the data stage's record shape."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"t{i}", "meta": {"source": "chats.jsonl", "format": "chat", "genre": None},
             "messages": ([{"role": "system", "content": SYSTEM}] if i == 0 else [])
             + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for i, (q, a) in enumerate(TEST_CHATS)]
    (data_dir / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    return data_dir


@pytest.fixture(scope="module")
def eval_settings(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Settings:
    """One MLflow store per module (its first migration takes seconds); a permissive gate."""
    root = tmp_path_factory.mktemp("eval")
    return Settings.load(
        home=root / ".changjak",
        base_model={"source": str(tiny_model_dir)},
        data={"out_dir": write_test_split(root / "data")},
        train={"device": "cpu", "dtype": "fp32"},
        eval={"max_samples": 4, "max_new_tokens": 8, "batch_size": 3, "gate": {"max_perplexity_ratio": 1e9}},
    )
