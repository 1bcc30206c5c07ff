"""Loss masking on the chat template: only assistant content and its end-of-turn token are learnt."""

from __future__ import annotations

from pathlib import Path

import pytest

from changjak.base_model import load_tokenizer
from changjak.errors import DataError
from changjak.train.sft import IGNORE_INDEX, ChatDataset, PaddingCollator, encode_chat

SYSTEM = {"role": "system", "content": "당신은 글쓰기 도우미입니다."}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir)


def _learnt(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"], strict=True)
                             if label != IGNORE_INDEX])


def test_labels_keep_only_the_assistant_content_and_end_of_turn(tokenizer) -> None:
    messages = [SYSTEM, {"role": "user", "content": "시를 써 주세요."},
                {"role": "assistant", "content": "바다는 조용했다."}]

    example = encode_chat(tokenizer, messages, max_length=512)

    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert example["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _learnt(tokenizer, example) == "바다는 조용했다.<|im_end|>"
    first = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(example["input_ids"][:first]) == prompt
    assert example["labels"][-1] == IGNORE_INDEX  # the newline after <|im_end|> is template, not answer


def test_every_assistant_turn_is_learnt_and_no_user_turn(tokenizer) -> None:
    messages = [{"role": "user", "content": "안녕하세요?"}, {"role": "assistant", "content": "안녕하세요."},
                {"role": "user", "content": "이야기를 들려 주세요."},
                {"role": "assistant", "content": "주인공은 편지를 발견했다."}]

    example = encode_chat(tokenizer, messages, max_length=512)

    assert _learnt(tokenizer, example) == "안녕하세요.<|im_end|>주인공은 편지를 발견했다.<|im_end|>"
    assert "이야기" not in _learnt(tokenizer, example)


def test_truncation_cuts_ids_and_labels_together(tokenizer) -> None:
    messages = [SYSTEM, {"role": "user", "content": "길게 써 주세요."},
                {"role": "assistant", "content": "오래된 골목에 비가 내렸다. " * 10}]
    full = encode_chat(tokenizer, messages, max_length=10_000)

    cut = encode_chat(tokenizer, messages, max_length=40)

    assert len(full["input_ids"]) > 40
    assert cut == {"input_ids": full["input_ids"][:40], "labels": full["labels"][:40]}


def test_dataset_drops_conversations_left_without_an_answer(tokenizer) -> None:
    short = {"messages": [{"role": "user", "content": "안녕?"}, {"role": "assistant", "content": "안녕!"}]}
    long_prompt = {"messages": [{"role": "user", "content": "설명해 주세요. " * 30},
                                {"role": "assistant", "content": "네."}]}

    dataset = ChatDataset([short, long_prompt, short], tokenizer, max_length=32)

    assert len(dataset) == 2
    assert dataset.dropped == 1
    assert dataset[0] == encode_chat(tokenizer, short["messages"], 32)


def test_collator_pads_right_with_pad_id_and_ignored_labels() -> None:
    collate = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)

    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])

    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]


def test_a_conversation_opening_with_the_assistant_is_refused(tokenizer) -> None:
    with pytest.raises(DataError, match="starts with an assistant turn"):
        encode_chat(tokenizer, [{"role": "assistant", "content": "안녕"}], 64)


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = ("{{ messages | length }}{% for m in messages %}<|im_start|>{{ m.role }}\n"
                               "{{ m.content }}<|im_end|>\n{% endfor %}")
    messages = [{"role": "user", "content": "안녕?"}, {"role": "assistant", "content": "안녕!"}]

    with pytest.raises(DataError, match="renders a conversation's prefix differently") as err:
        encode_chat(tokenizer, messages, 64)
    assert err.value.hint
