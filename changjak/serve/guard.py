"""The safety policy around one chat completion: the request before the model, the answer after.

    chat = guard.request(engine, settings, body.messages, tenant)   # 400 content_policy_violation if blocked
    ... model generates from chat.messages ...
    text, finish = chat.answer(text)                                 # masked/sanitised, or content_filter
    stream = chat.stream()                                            # the same for a stream, piece by piece

Before the model, each user message goes through the ``request`` checks (PII masked, attacks
refused) and the system prompt is fenced with a fresh canary (``safety.fence_system_prompt``); a
conversation without a system message gets the training one (``data.system_prompt``), fenced too.
After the model, the answer goes through the ``response`` checks; reversibly masked PII of the
user's own is put back last. Every verdict is logged as its summary: categories, scores, actions,
never text.

The checks are pure functions of the text and the tenant's policy, so :class:`VerdictMemo`
remembers recent verdicts of one engine by the text's SHA-256: a user message seen again (every
earlier turn of a conversation, a repeated prompt) and a cached answer sent again cost a hash
instead of the checks. What it never reuses: a verdict that took a reversible PII vault in or
gave one out (its masked values belong to one conversation), and the canary check of an answer
(each conversation's canary is new): an answer's memo holds the verdict without it, and the folded
forms of the text the checks would have seen (``fencing.canary_views``), in which the canary is
looked for on every answer.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from changjak.errors import ContentPolicyViolation
from changjak.safety import fencing, sanitize
from changjak.safety.pii import PiiVault
from changjak.safety.policy import ContentBlocked, Decision, SafetyEngine, StreamGuard, Verdict

if TYPE_CHECKING:
    from changjak.serve.protocol import ChatMessage
    from changjak.settings import Settings

logger = logging.getLogger(__name__)


class VerdictMemo:
    """Recent verdicts of one engine: (surface, tenant, sha256 of the text) -> verdict (and sanitised text)."""

    MAX_ENTRIES = 4096
    MAX_CHARS = 16_384  # longer texts are checked every time: the memo's memory stays bounded

    def __init__(self, engine: SafetyEngine) -> None:
        self.engine = engine
        self._seen: dict[tuple[str, str | None, bytes], tuple[Verdict, str | tuple[str, ...]]] = {}
        self.hits = 0

    def _remember(self, key: tuple, value: tuple[Verdict, str | tuple[str, ...]]) -> None:
        if len(self._seen) >= self.MAX_ENTRIES:
            self._seen.clear()
        self._seen[key] = value

    def request(self, text: str, tenant: str | None, vault: PiiVault | None) -> Verdict:
        """``engine.check(text, surface="request", tenant=tenant, vault=vault)``."""
        if vault is not None or len(text) > self.MAX_CHARS:
            return self.engine.check(text, surface="request", tenant=tenant, vault=vault)
        key = ("request", tenant, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        if (found := self._seen.get(key)) is not None:
            self.hits += 1
            return found[0]
        verdict = self.engine.check(text, surface="request", tenant=tenant)
        if verdict.vault is None:
            self._remember(key, (verdict, text))
        return verdict

    def response(self, text: str, tenant: str | None, canary: str | None) -> Verdict:
        """``engine.check(text, surface="response", tenant=tenant, canary=canary)``."""
        if len(text) > self.MAX_CHARS or not self.engine.settings.enabled:
            return self.engine.check(text, surface="response", tenant=tenant, canary=canary)
        key = ("response", tenant, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        if (found := self._seen.get(key)) is not None:
            self.hits += 1
            verdict, views = found
        else:
            verdict = self.engine.check(text, surface="response", tenant=tenant)  # every check but the canary's
            sanitised = text  # what the canary check sees: the text after markup masking, as in engine.check
            if self.engine.policy(tenant).actions["markup"] == "mask":
                cleaned = sanitize.sanitize_output(text, self.engine.allowed_hosts)
                sanitised = cleaned.text if cleaned.actions else text
            views = fencing.canary_views(sanitised)  # the text's folded forms: each canary is looked for in them
            if verdict.vault is None:
                self._remember(key, (verdict, views))
        if canary and fencing.leaks_canary(text, canary, views):
            canary_decision = Decision("canary", 1.0, self.engine.policy(tenant).actions["canary"])
            decisions = list(verdict.decisions)
            decisions.insert(1 if decisions and decisions[0].category == "markup" else 0, canary_decision)
            verdict = Verdict(verdict.surface, verdict.text, tuple(decisions), verdict.vault)
        return verdict


_MEMOS: weakref.WeakKeyDictionary[SafetyEngine, VerdictMemo] = weakref.WeakKeyDictionary()


def memo_of(engine: SafetyEngine) -> VerdictMemo:
    """The verdict memo of ``engine`` (one per engine, made on first use)."""
    if (memo := _MEMOS.get(engine)) is None:
        memo = _MEMOS[engine] = VerdictMemo(engine)
    return memo


@dataclass
class GuardedChat:
    engine: SafetyEngine
    tenant: str | None
    messages: list[dict[str, str]]  # what the model sees
    canary: str | None
    vault: PiiVault | None
    verdicts: list[dict] = field(default_factory=list)  # summaries, for the audit trail

    def answer(self, text: str) -> tuple[str, bool]:
        """The answer as it may be sent, and whether the policy withheld it (finish_reason content_filter)."""
        verdict = memo_of(self.engine).response(text, self.tenant, self.canary)
        self.record(verdict)
        if verdict.blocked:
            return "", True
        return self.restore(verdict.text), False

    def add_context(self, block: str) -> None:
        """Append a fenced data block (retrieved documents) to the system message, making one if needed."""
        if self.messages and self.messages[0]["role"] == "system":
            self.messages[0] = {"role": "system", "content": f"{self.messages[0]['content']}\n\n{block}"}
        else:
            self.messages.insert(0, {"role": "system", "content": block})

    def stream(self) -> GuardedStream:
        return GuardedStream(self, self.engine.stream(tenant=self.tenant, canary=self.canary))

    def restore(self, text: str) -> str:
        """``text`` with the user's reversibly masked values put back."""
        return self.vault.restore(text) if self.vault else text

    def record(self, verdict: Verdict, where: str = "answer") -> None:
        """Keep the verdict's summary for the audit trail; log it when something fired."""
        summary = verdict.summary()
        self.verdicts.append(summary)
        if verdict.decisions:
            logger.info("safety verdict on %s: %s", where, summary)


@dataclass
class GuardedStream:
    chat: GuardedChat
    guard: StreamGuard

    def feed(self, text: str) -> str:
        """What may be sent of the answer now; raises ContentBlocked when the policy cuts the stream."""
        try:
            return self.chat.restore(self.guard.feed(text))
        except ContentBlocked as blocked:
            self.chat.record(blocked.verdict)
            raise

    def finish(self) -> str:
        try:
            out = self.chat.restore(self.guard.finish())
        except ContentBlocked as blocked:
            self.chat.record(blocked.verdict)
            raise
        self.chat.record(self.guard.verdict())
        return out


def request(engine: SafetyEngine, settings: Settings, messages: list[ChatMessage],
            tenant: str | None = None) -> GuardedChat:
    """The messages the model may see; ContentPolicyViolation naming the message if one is refused."""
    chat = GuardedChat(engine, tenant, [], None, None)
    memo = memo_of(engine)
    for index, message in enumerate(messages):
        content = message.content
        if message.role == "user":
            verdict = memo.request(content, tenant, chat.vault)
            chat.record(verdict, where=f"messages[{index}]")
            if verdict.blocked:
                refused = ContentPolicyViolation(
                    f"messages[{index}] was refused by the safety policy ({', '.join(verdict.blocked_by)}); "
                    "rephrase it without that content.", param=f"messages[{index}].content")
                refused.verdicts = chat.verdicts  # summaries (no text), for the audit record and metrics
                raise refused
            content, chat.vault = verdict.text, verdict.vault or chat.vault
        chat.messages.append({"role": message.role, "content": content})

    if engine.settings.enabled and engine.settings.fence_system_prompt:
        system = chat.messages[0]["content"] if chat.messages[0]["role"] == "system" else settings.data.system_prompt
        if system:
            chat.canary = fencing.new_canary()
            fenced = {"role": "system", "content": fencing.fence_system_prompt(system, chat.canary)}
            if chat.messages[0]["role"] == "system":
                chat.messages[0] = fenced
            else:
                chat.messages.insert(0, fenced)
    return chat
