"""Token ids to text deltas, and the next token from a row of logits, for backends that decode
themselves (the transformers backend's scheduler calls both once per sequence per step).

    decoder = IncrementalDecoder(tokenizer); decoder.push(token_id) -> "" or the text it completes
    pick(logits_row, params, generator) -> token id
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from changjak.backends.inference.base import GenerationParams

_NUCLEUS_GUESS = 64


class IncrementalDecoder:
    """Turns token ids into text deltas that never end inside a multi-byte character.

    Each new token is decoded together with the tokens since the last emitted delta; the new text
    is emitted once it no longer ends in U+FFFD (the bytes of a character not yet complete).
    """

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context)
        self.prefix = 0  # start of the tokens decoded with each new one
        self.read = len(self.ids)  # end of the tokens already emitted

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (often "" mid-character)."""
        self.ids.append(token)
        return self._take(final=False)

    def flush(self) -> str:
        """The text still held back, without an incomplete character at its end."""
        return self._take(final=True)

    def _take(self, *, final: bool) -> str:
        emitted = self._text(self.ids[self.prefix:self.read])
        text = self._text(self.ids[self.prefix:])
        if not final and (len(text) <= len(emitted) or text.endswith("\ufffd")):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(emitted):].rstrip("\ufffd") if final else text[len(emitted):]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def pick(logits: Any, params: GenerationParams, generator: Any) -> int:
    """Greedy at temperature 0; otherwise sample from the top-p nucleus with ``generator``."""
    import torch

    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p >= 1:
        return _draw(probs, generator)
    # The nucleus is nearly always within the top few dozen tokens: sort those, not the whole
    # vocabulary (150k for Qwen2, every sampled sequence, every step), unless they fall short.
    top, order = probs.topk(min(_NUCLEUS_GUESS, probs.numel()))
    if float(top.sum()) < params.top_p and len(top) < len(probs):
        top, order = probs.sort(descending=True)
    top[top.cumsum(0) - top > params.top_p] = 0  # keep the fewest tokens that reach top_p
    return int(order[_draw(top, generator)])


def _draw(probs: Any, generator: Any) -> int:
    """One index with probability ``probs[i]`` (unnormalised is fine): a uniform draw on the CDF.

    Exact, and much faster than ``torch.multinomial`` over a whole vocabulary on the CPU.
    """
    import torch

    cdf = probs.cumsum(0)
    u = torch.rand(1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1))  # right: never a zero-p token
