"""One safety policy for every place text enters or leaves changjak.

    engine = SafetyEngine.from_settings(settings)
    verdict = engine.check("제 번호는 010-1234-5678이에요", surface="request", tenant="acme")
    verdict.action, verdict.text   # ('mask', '제 번호는 <전화번호>이에요')
    verdict.summary()              # {'action': 'mask', 'categories': {'pii': {...}}}: no text, safe to log

A policy says, for each category, what happens when its check fires: ``allow`` (record it only),
``flag`` (let it through, marked), ``mask`` (rewrite the offending part) or ``block`` (refuse). A
profile is a ready-made policy; a tenant may pick another profile and override single actions.

| category  | what fires it                                           | actions       |
|-----------|---------------------------------------------------------|---------------|
| pii       | :mod:`pii` findings (Korean identifiers, phones, ...)   | allow flag mask block |
| profanity | :mod:`profanity` lexicon, through obfuscation           | allow flag mask block |
| hate      | :mod:`hate` classifier (BEEP!-trained): its threshold flags, ``hate_block_score`` blocks | allow flag block |
| harm      | :mod:`harm`: requests for real-world harm instructions  | allow flag block |
| injection | :mod:`injection` detector                               | allow flag block |
| canary    | the system prompt's canary found in an answer           | flag block |
| markup    | :mod:`sanitize`: exfiltrating links, HTML, escapes      | allow mask |

Which checks run depends on the surface: ``request`` (user messages, before the model) looks for
pii, profanity, hate, harm and injection; ``document`` (RAG text at ingest) and ``feedback`` for
pii, profanity, hate and injection; ``response`` (the answer, whole or streamed through
:class:`StreamGuard`) for markup, canary, pii, profanity and hate; ``data`` (training text) for
pii, profanity and hate; ``stream`` is ``response`` without markup, for the pieces
:class:`StreamGuard` checks after its own sanitiser. Harm is a request check: stories may describe a bomb being built, and
the request for a working recipe is what is refused. ``log`` masks PII and
nothing else, whatever the policy says: PII never reaches a log line, an audit record or a cache key.

The ``creative`` profile (the default) is made for fiction: characters may swear and stories may
be dark, so profanity is only flagged, while hate against real groups, recipes for real-world
harm (whoever in the story asks), attacks on the assistant and leaks are blocked and personal
data is masked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from changjak.errors import ConfigError
from changjak.safety import fencing, harm, injection, pii, profanity, sanitize

if TYPE_CHECKING:
    from changjak.safety.hate import HateClassifier
    from changjak.settings import SafetySettings, Settings

logger = logging.getLogger(__name__)

Action = Literal["allow", "flag", "mask", "block"]
ACTIONS: tuple[Action, ...] = ("allow", "flag", "mask", "block")  # in rising severity
CATEGORIES = ("pii", "profanity", "hate", "harm", "injection", "canary", "markup")
ALLOWED: dict[str, tuple[str, ...]] = {
    "pii": ACTIONS, "profanity": ACTIONS, "hate": ("allow", "flag", "block"), "harm": ("allow", "flag", "block"),
    "injection": ("allow", "flag", "block"), "canary": ("flag", "block"), "markup": ("allow", "mask"),
}
SURFACES: dict[str, tuple[str, ...]] = {
    "request": ("pii", "profanity", "hate", "harm", "injection"),
    "document": ("pii", "profanity", "hate", "injection"),
    "feedback": ("pii", "profanity", "hate", "injection"),
    "response": ("markup", "canary", "pii", "profanity", "hate"),
    "stream": ("canary", "pii", "profanity", "hate"),  # a streamed answer: StreamSanitizer does markup
    "data": ("pii", "profanity", "hate"),
    "log": ("pii",),
}
PROFILES: dict[str, dict[str, Action]] = {
    # fiction: swearing characters and dark themes pass (flagged); real-world hate, attacks, leaks do not
    "creative": {"pii": "mask", "profanity": "flag", "hate": "block", "harm": "block", "injection": "block",
                 "canary": "block", "markup": "mask"},
    # a general assistant: profanity is starred out
    "standard": {"pii": "mask", "profanity": "mask", "hate": "block", "harm": "block", "injection": "block",
                 "canary": "block", "markup": "mask"},
    # children's or regulated services: personal data and any profanity are refused
    "strict": {"pii": "block", "profanity": "block", "hate": "block", "harm": "block", "injection": "block",
               "canary": "block", "markup": "mask"},
    # measure before enforcing: everything recorded, nothing refused (answers are still sanitised)
    "monitor": {"pii": "flag", "profanity": "flag", "hate": "flag", "harm": "flag", "injection": "flag",
                "canary": "flag", "markup": "mask"},
}
PROFANITY_MASK = "*"


def validate_actions(actions: Mapping[str, str], where: str) -> list[str]:
    """Problems with a ``category: action`` mapping, each naming ``where`` it was set."""
    problems = []
    for category, action in actions.items():
        if category not in ALLOWED:
            problems.append(f"{where}.{category}: unknown category (use one of {', '.join(CATEGORIES)})")
        elif action not in ALLOWED[category]:
            problems.append(f"{where}.{category}: {action!r} is not possible here "
                            f"(use one of {', '.join(ALLOWED[category])})")
    return problems


@dataclass(frozen=True)
class Decision:
    category: str
    score: float
    action: Action
    detail: tuple[str, ...] = ()  # one sub-kind per finding (PII kinds, profanity categories, injection cues): never text


@dataclass(frozen=True)
class Verdict:
    surface: str
    text: str  # what may go on: masked and sanitised where the policy says so
    decisions: tuple[Decision, ...] = ()
    vault: pii.PiiVault | None = None  # values of reversibly masked PII, to restore in the answer

    @property
    def action(self) -> Action:
        return max((d.action for d in self.decisions), key=ACTIONS.index, default="allow")

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def blocked_by(self) -> list[str]:
        return [d.category for d in self.decisions if d.action == "block"]

    def summary(self) -> dict:
        """The verdict without any text: safe for logs, audit records and metrics."""
        return {"surface": self.surface, "action": self.action,
                "categories": {d.category: {"score": round(d.score, 4), "action": d.action, "detail": list(d.detail)}
                               for d in self.decisions}}


@dataclass(frozen=True)
class Policy:
    """The actions in force for one tenant."""

    profile: str
    actions: dict[str, Action]
    reversible_pii: frozenset[str] = frozenset()


class SafetyEngine:
    """Runs the checks of a surface under a tenant's policy. Cheap to call; build one per process."""

    def __init__(self, settings: SafetySettings, hate: HateClassifier | None = None) -> None:
        self.settings = settings
        self.hate = hate
        self.allowed_hosts = tuple(settings.allowed_hosts)
        self._policies: dict[str | None, Policy] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SafetyEngine:
        """The engine for ``settings.safety``, with the hate classifier if one has been trained."""
        return cls(settings.safety, load_hate_model(settings.safety_hate_model_dir))

    def policy(self, tenant: str | None = None) -> Policy:
        if tenant not in self._policies:
            own = self.settings.tenants.get(tenant) if tenant is not None else None
            profile = (own.profile if own and own.profile else None) or self.settings.profile
            actions = {**PROFILES[profile], **self.settings.actions, **(own.actions if own else {})}
            reversible = own.reversible_pii if own and own.reversible_pii is not None else self.settings.reversible_pii
            self._policies[tenant] = Policy(profile, actions, frozenset(reversible))
        return self._policies[tenant]

    def warm_up(self) -> None:
        """Run every surface's checks once on a harmless text, so what they build on first use (the
        injection cues' regexes: ~0.2-0.4 s here, the recognisers) is built now, not in a user's request."""
        text = "비 오는 골목에서 편지를 발견했다. A letter in the rain."
        for surface in SURFACES:
            self.check(text, surface=surface)

    def check(self, text: str, *, surface: str, tenant: str | None = None, canary: str | None = None,
              vault: pii.PiiVault | None = None) -> Verdict:
        """Every check of ``surface`` on ``text``; ``text`` comes back masked/sanitised as the policy says.

        ``vault`` carries reversibly masked PII across the messages of one conversation.
        """
        if surface not in SURFACES:
            raise ValueError(f"unknown safety surface {surface!r}; one of {', '.join(SURFACES)}")
        if not self.settings.enabled and surface != "log":
            return Verdict(surface, text)
        policy = self.policy(tenant)
        categories = SURFACES[surface]
        actions = {c: ("mask" if surface == "log" else policy.actions[c]) for c in categories}
        decisions: list[Decision] = []
        vault = None

        if "markup" in actions:
            cleaned = sanitize.sanitize_output(text, self.allowed_hosts)
            if cleaned.actions:
                decisions.append(Decision("markup", 1.0, actions["markup"], tuple(sorted(cleaned.actions))))
                if actions["markup"] == "mask":
                    text = cleaned.text
        if "canary" in actions and canary and fencing.leaks_canary(text, canary):
            decisions.append(Decision("canary", 1.0, actions["canary"]))
        if "pii" in actions:
            text, vault, decision = self._pii(text, actions["pii"], policy.reversible_pii, vault)
            decisions += [decision] if decision else []
        if "profanity" in actions:
            found = profanity.check(text)
            if found.flagged:
                decisions.append(Decision("profanity", found.score, actions["profanity"],
                                          tuple(sorted(c for c, _, _ in found.matches))))
                if actions["profanity"] == "mask":
                    text = star(text, [(s, e) for _, s, e in found.matches])
        if "hate" in actions and self.hate is not None and self.hate.predict(text):
            score = self.hate.score(text)
            # The classifier's own threshold flags; only a confident score blocks (see hate_block_score).
            action = actions["hate"]
            if action == "block" and score < self.settings.hate_block_score:
                action = "flag"
            decisions.append(Decision("hate", score, action))
        if "harm" in actions:
            found = harm.detect(text)
            if found.flagged:
                decisions.append(Decision("harm", found.score, actions["harm"], found.cues))
        if "injection" in actions:
            found = injection.detect(text, threshold=self.settings.injection_threshold)
            if found.blocked:
                decisions.append(Decision("injection", found.score, actions["injection"], found.categories))
        return Verdict(surface, text, tuple(decisions), vault)

    def _pii(self, text: str, action: Action, reversible: frozenset[str],
             vault: pii.PiiVault | None) -> tuple[str, pii.PiiVault | None, Decision | None]:
        masked = pii.mask(text, reversible=reversible if action == "mask" else False, vault=vault)
        if not masked.counts:
            return text, vault, None
        decision = Decision("pii", 1.0, action, tuple(sorted(masked.counts.elements())))
        if action == "mask":
            return masked.text, masked.vault if masked.vault else vault, decision
        return text, vault, decision

    def stream(self, *, tenant: str | None = None, canary: str | None = None) -> StreamGuard:
        """A guard for one streamed answer: feed it the model's text, send what it returns."""
        return StreamGuard(self, tenant, canary)

    def mask_for_log(self, text: str) -> str:
        """``text`` with every PII finding masked: for log lines, audit records and cache keys."""
        return pii.mask(text).text


def star(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each span's letters replaced by ``*`` (spaces kept, so the sentence still reads)."""
    chars = list(text)
    for start, end in spans:
        for i in range(start, end):
            if not chars[i].isspace():
                chars[i] = PROFANITY_MASK
    return "".join(chars)


class ContentBlocked(Exception):
    """A stream the policy cut; ``verdict`` says why (no text of the answer in it)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"answer blocked by the safety policy ({', '.join(verdict.blocked_by)})")
        self.verdict = verdict


# A tail that may still grow into PII or a profanity: the last word, or a run of digits and
# separators that can hold spaces ("010 1234 5678"). Held back until it is complete, up to
# HOLD_PII characters if it could be an identifier (digits, @, Latin letters), HOLD_WORD if not
# (the longest lexicon spellings), so that text without spaces still streams.
_HOLD = re.compile(r"(?:[0-9\uff10-\uff19][0-9\uff10-\uff19 \t\-\u2010-\u2015.()/]*)?\S*\Z")
_IDENTIFIER = re.compile(r"[0-9\uff10-\uff19@A-Za-z]")
HOLD_PII, HOLD_WORD = 40, 8


@dataclass
class StreamGuard:
    """The response checks on a stream, over a rolling window.

    Text is released at word boundaries: each released piece is checked together with up to
    ``safety.stream_window`` characters already sent (so a name, a number or a slur split across
    tokens is seen whole), masked where the policy masks, and the guard raises
    :class:`ContentBlocked` as soon as a block fires, before the offending piece is sent. Answers
    are sanitised on the way in by :class:`sanitize.StreamSanitizer`.
    """

    engine: SafetyEngine
    tenant: str | None
    canary: str | None
    sent: str = ""
    pending: str = ""
    decisions: dict[str, Decision] = field(default_factory=dict)

    @cached_property
    def _sanitizer(self) -> sanitize.StreamSanitizer | None:
        policy = self.engine.policy(self.tenant)
        return sanitize.StreamSanitizer(self.engine.allowed_hosts) if policy.actions["markup"] == "mask" else None

    def feed(self, chunk: str) -> str:
        """What of the answer so far may be sent now (possibly ``""``)."""
        if not self.engine.settings.enabled:
            return chunk
        self.pending += self._sanitizer.feed(chunk) if self._sanitizer else chunk
        cut = len(self.pending)
        if (hold := _HOLD.search(self.pending)) is not None:
            tail = self.pending[hold.start():]
            if len(tail) <= (HOLD_PII if _IDENTIFIER.search(tail) else HOLD_WORD):
                cut = hold.start()
        return self._release(cut)

    def finish(self) -> str:
        """The rest of the answer, checked as its end."""
        if not self.engine.settings.enabled:
            return ""
        if self._sanitizer:
            self.pending += self._sanitizer.finish()
        return self._release(len(self.pending))

    def verdict(self) -> Verdict:
        """Everything the guard decided so far (the text is what was sent)."""
        return Verdict("response", self.sent, tuple(self.decisions.values()))

    def _release(self, cut: int) -> str:
        piece, self.pending = self.pending[:cut], self.pending[cut:]
        if not piece:
            return ""
        context = self.sent[-self.engine.settings.stream_window:]
        window = context + piece
        verdict = self.engine.check(window, surface="stream", tenant=self.tenant, canary=self.canary)
        for d in verdict.decisions:
            self.decisions.setdefault(d.category, d)
        if self._sanitizer and self._sanitizer.actions:
            action = self.engine.policy(self.tenant).actions["markup"]
            self.decisions["markup"] = Decision("markup", 1.0, action, tuple(sorted(self._sanitizer.actions)))
        if verdict.blocked:
            raise ContentBlocked(Verdict("response", "", tuple(self.decisions.values())))
        # The window's context was sent already; what masking changed there stays as sent.
        if verdict.text.startswith(context):
            out = verdict.text[len(context):]
        else:  # masking in the window reached back into what was sent: mask the piece on its own
            out = self.engine.check(piece, surface="stream", tenant=self.tenant).text
        self.sent += out
        return out


def load_hate_model(path: Path) -> HateClassifier | None:
    """The trained hate classifier at ``path``, or None (warned once) when none has been trained there."""
    from changjak.safety.hate import CARD_FILE, MODEL_FILE, HateClassifier

    if not ((path / MODEL_FILE).is_file() and (path / CARD_FILE).is_file()):
        logger.warning("no hate/offensive classifier in %s: the hate category is off (train one with "
                       "`changjak safety train-hate --data DIR`)", path)
        return None
    try:
        return HateClassifier.load(path)
    except ConfigError as e:
        logger.warning("hate/offensive classifier not loaded: %s", e)
        return None
