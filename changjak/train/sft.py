"""Chat records to training tensors, with the loss on the assistant's words only.

A conversation is rendered with the model's own chat template (the one serving will use), so the
fine-tune learns exactly the format it is later prompted with. Labels are -100 (ignored) on the
system prompt, the user turns and the template's markup; they keep the token ids of each
assistant turn's content and its end-of-turn token (``<|im_end|>`` for Qwen), so the model learns
what to say and when to stop. Assistant spans are found by rendering prefixes of the
conversation: the text up to the generation prompt before the turn, and the text with the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from changjak.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
_TEMPLATE_HINT = "use a chat template that renders earlier turns the same way whatever follows them"


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                max_length: int) -> dict[str, list[int]]:
    """Token ids and labels of one conversation, truncated to ``max_length`` tokens."""
    text = _render(tokenizer, messages)
    spans = [_assistant_span(tokenizer, messages, i, text)
             for i, message in enumerate(messages) if message["role"] == "assistant"]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"][:max_length]
    labels = [token if any(start <= offset < end for start, end in spans) else IGNORE_INDEX
              for token, (offset, _) in zip(input_ids, encoded["offset_mapping"], strict=False)]
    return {"input_ids": input_ids, "labels": labels}


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *,
            add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _assistant_span(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], i: int,
                    text: str) -> tuple[int, int]:
    """Character span of turn ``i``'s content and end-of-turn marker in the rendered ``text``."""
    if i == 0:
        raise DataError("a conversation starts with an assistant turn", hint="start with a system or user turn")
    before = _render(tokenizer, messages[:i], add_generation_prompt=True)
    upto = _render(tokenizer, messages[: i + 1]).rstrip()  # keeps <|im_end|>, drops the newline after
    if not (text.startswith(before) and text.startswith(upto) and len(upto) > len(before)):
        raise DataError("the chat template renders a conversation's prefix differently from the whole",
                        hint=_TEMPLATE_HINT)
    return len(before), len(upto)


class ChatDataset:
    """Encoded conversations in memory; those left with no assistant token after truncation are
    dropped (they would teach nothing) and counted in ``dropped``."""

    def __init__(self, records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> None:
        self.examples: list[dict[str, list[int]]] = []
        self.dropped = 0
        for record in tqdm(records, desc="tokenising", unit="conv"):
            example = encode_chat(tokenizer, record["messages"], max_length)
            if any(label != IGNORE_INDEX for label in example["labels"]):
                self.examples.append(example)
            else:
                self.dropped += 1

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


@dataclass
class PaddingCollator:
    """Right-pads a batch to its longest example: ``pad_token_id`` in the inputs, -100 in the labels."""

    pad_token_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_token_id] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
            batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
        return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
