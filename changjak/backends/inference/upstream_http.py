"""A small keep-alive HTTP/1.1 client for the ``openai`` backend's one hot request: a streamed POST.

    client = UpstreamHTTP("http://vllm:8000/v1", headers={"Authorization": "Bearer ..."}, timeout=60)
    async with client.stream("/chat/completions", body_bytes) as response:
        response.status, await response.read()          # or: async for line in response.lines()
    await client.aclose()

Why not httpx here: for a short streamed reply httpx (request building, URL merging, the
connection pool's state machine, h11, anyio wrappers) cost the gateway ~3 ms of CPU a request,
more than everything else it does. This client writes the request bytes once and parses the
response itself (status line, headers, ``Content-Length``, chunked or to-EOF bodies), keeping
idle connections for the next request. It is only picked for plain ``http://`` upstreams with no
proxy in the environment and no injected transport; anything else stays on httpx
(:class:`~changjak.backends.inference.openai_upstream.OpenAIUpstreamBackend` decides).

Timeouts are httpx's: ``connect_timeout`` to connect, ``timeout`` for each write and each read.
Every failure (refused, reset, timed out, a malformed response) is an :class:`UpstreamError`
naming the OS or protocol error class. A response not read to its end (a client that hung up)
closes its connection, which tells the upstream server to stop generating; one read to its end
goes back to the pool. A kept-alive connection the server closed meanwhile is retried once on a
fresh one, as long as nothing of the response had arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

MAX_IDLE = 64  # idle connections kept: about the upstream's useful concurrency


class UpstreamError(Exception):
    """The upstream could not be reached or answered something that is not HTTP/1.1; ``kind`` says how."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, False

    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()


class Response:
    """One response: ``status``, ``reason``, ``headers`` (lower-case names); the body read once."""

    def __init__(self, conn: _Connection, status: int, reason: str, headers: dict[str, str], timeout: float,
                 head_only: bool) -> None:
        self.conn, self.status, self.reason, self.headers, self.timeout = conn, status, reason, headers, timeout
        self.complete = False  # the whole body was read: the connection may be kept
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        if head_only or status in (204, 304) or 100 <= status < 200:
            self._mode, self._left = "none", 0
        elif chunked:
            self._mode, self._left = "chunked", 0
        elif length is not None:
            try:
                self._mode, self._left = "length", int(length)
            except ValueError:
                raise UpstreamError("RemoteProtocolError") from None
        else:
            self._mode, self._left = "eof", 0
        self.keep_alive = self._mode != "eof" and headers.get("connection", "").lower() != "close"

    async def _read(self, call):
        async with asyncio.timeout(self.timeout):
            return await call

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives."""
        reader = self.conn.reader
        try:
            if self._mode == "length":
                while self._left > 0:
                    data = await self._read(reader.read(min(self._left, 65536)))
                    if not data:
                        raise UpstreamError("RemoteProtocolError")
                    self._left -= len(data)
                    yield data
            elif self._mode == "chunked":
                while True:
                    line = await self._read(reader.readuntil(b"\r\n"))
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise UpstreamError("RemoteProtocolError") from None
                    if size == 0:
                        while (await self._read(reader.readuntil(b"\r\n"))) != b"\r\n":
                            pass  # trailers
                        break
                    data = await self._read(reader.readexactly(size + 2))
                    yield data[:-2]
            elif self._mode == "eof":
                while data := await self._read(reader.read(65536)):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise UpstreamError("RemoteProtocolError") from None
        except TimeoutError:
            raise UpstreamError("ReadTimeout") from None
        except OSError as e:
            raise UpstreamError(e.__class__.__name__) from None
        self.complete = True

    async def lines(self) -> AsyncIterator[str]:
        """The body's lines (UTF-8, line ends stripped), e.g. server-sent events."""
        rest = b""
        async for data in self.chunks():
            rest += data
            if b"\n" not in data:
                continue
            *whole, rest = rest.split(b"\n")
            for line in whole:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    async def read(self) -> bytes:
        return b"".join([data async for data in self.chunks()])


class UpstreamHTTP:
    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None, timeout: float = 60.0,
                 connect_timeout: float = 5.0) -> None:
        url = urlsplit(base_url.rstrip("/"))
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"UpstreamHTTP speaks plain http:// only, not {base_url!r}")
        self.host, self.port, self.prefix = url.hostname, url.port or 80, url.path
        self.timeout, self.connect_timeout = timeout, connect_timeout
        netloc = url.netloc.rsplit("@", 1)[-1]
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {
            "Host": netloc, "Accept": "*/*", "Accept-Encoding": "identity", "Connection": "keep-alive",
            **(headers or {})}.items())
        self._idle: list[_Connection] = []
        self._closed = False

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise UpstreamError("ConnectTimeout") from None
        except OSError as e:
            raise UpstreamError(f"ConnectError: {e.__class__.__name__}") from None
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, request: bytes) -> tuple[int, str, dict[str, str]]:
        conn.writer.write(request)
        async with asyncio.timeout(self.timeout):
            await conn.writer.drain()
            head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise UpstreamError("RemoteProtocolError")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(code), reason, headers

    @asynccontextmanager
    async def stream(self, path: str, body: bytes | None = None, *, method: str = "POST",
                     content_type: str = "application/json") -> AsyncIterator[Response]:
        """One request; the response's body is read inside the block (or its connection is closed)."""
        if self._closed:
            raise UpstreamError("ClientClosed")
        request = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._head}".encode("latin-1")
        if body is not None:
            request += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        else:
            request += b"\r\n"
        response = None
        for attempt in (0, 1):
            conn = None
            while self._idle and conn is None:
                if (candidate := self._idle.pop()).usable():
                    conn = candidate
                else:
                    candidate.close()
            reused = conn is not None
            conn = conn or await self._connect()
            try:
                status, reason, headers = await self._exchange(conn, request)
                response = Response(conn, status, reason, headers, self.timeout, method == "HEAD")
                break
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                conn.close()
                if reused and attempt == 0 and (not isinstance(e, asyncio.IncompleteReadError) or not e.partial):
                    continue  # a kept-alive connection the server had closed: once more, on a new one
                raise UpstreamError(e.__class__.__name__) from None
            except asyncio.LimitOverrunError:
                conn.close()
                raise UpstreamError("RemoteProtocolError") from None
            except TimeoutError:
                conn.close()
                raise UpstreamError("ReadTimeout") from None
            except OSError as e:
                conn.close()
                raise UpstreamError(e.__class__.__name__) from None
            except BaseException:
                conn.close()
                raise
        try:
            yield response
        finally:
            if response.complete and response.keep_alive and not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(response.conn)
            else:
                response.conn.close()  # unread (a client that hung up): the upstream stops generating

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
