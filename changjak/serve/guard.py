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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from changjak.errors import ContentPolicyViolation
from changjak.safety import fencing
from changjak.safety.pii import PiiVault
from changjak.safety.policy import ContentBlocked, SafetyEngine, StreamGuard, Verdict

if TYPE_CHECKING:
    from changjak.serve.protocol import ChatMessage
    from changjak.settings import Settings

logger = logging.getLogger(__name__)


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
        verdict = self.engine.check(text, surface="response", tenant=self.tenant, canary=self.canary)
        self._record(verdict)
        if verdict.blocked:
            return "", True
        return self._restore(verdict.text), False

    def stream(self) -> GuardedStream:
        return GuardedStream(self, self.engine.stream(tenant=self.tenant, canary=self.canary))

    def _restore(self, text: str) -> str:
        return self.vault.restore(text) if self.vault else text

    def _record(self, verdict: Verdict) -> None:
        summary = verdict.summary()
        self.verdicts.append(summary)
        if verdict.decisions:
            logger.info("safety verdict %s", summary)


@dataclass
class GuardedStream:
    chat: GuardedChat
    guard: StreamGuard

    def feed(self, text: str) -> str:
        """What may be sent of the answer now; raises ContentBlocked when the policy cuts the stream."""
        try:
            return self.chat._restore(self.guard.feed(text))
        except ContentBlocked as blocked:
            self.chat._record(blocked.verdict)
            raise

    def finish(self) -> str:
        try:
            out = self.chat._restore(self.guard.finish())
        except ContentBlocked as blocked:
            self.chat._record(blocked.verdict)
            raise
        self.chat._record(self.guard.verdict())
        return out


def request(engine: SafetyEngine, settings: Settings, messages: list[ChatMessage],
            tenant: str | None = None) -> GuardedChat:
    """The messages the model may see; ContentPolicyViolation naming the message if one is refused."""
    vault: PiiVault | None = None
    out: list[dict[str, str]] = []
    verdicts = []
    for index, message in enumerate(messages):
        content = message.content
        if message.role == "user":
            verdict = engine.check(content, surface="request", tenant=tenant, vault=vault)
            verdicts.append(verdict.summary())
            if verdict.decisions:
                logger.info("safety verdict on messages[%d]: %s", index, verdict.summary())
            if verdict.blocked:
                raise ContentPolicyViolation(
                    f"messages[{index}] was refused by the safety policy ({', '.join(verdict.blocked_by)}); "
                    "rephrase it without that content.", param=f"messages[{index}].content")
            content, vault = verdict.text, verdict.vault or vault
        out.append({"role": message.role, "content": content})

    canary = None
    if engine.settings.enabled and engine.settings.fence_system_prompt:
        canary = fencing.new_canary()
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": fencing.fence_system_prompt(out[0]["content"], canary)}
        elif settings.data.system_prompt:
            out.insert(0, {"role": "system", "content": fencing.fence_system_prompt(settings.data.system_prompt,
                                                                                   canary)})
        else:
            canary = None
    return GuardedChat(engine, tenant, out, canary, vault, verdicts)
