"""Request body limit as plain ASGI middleware: a body over the limit gets 413 before it is read whole.

A declared ``Content-Length`` over the limit is answered at once, without reading a byte of the body; a body
without one (chunked) is counted as it arrives and refused at the chunk that crosses the limit. Either way
the connection is closed after the answer, so the rest of the body is never read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    """Raised inside the app's ``receive`` when the body crosses the limit."""


def json_error_messages(status: int, detail: str, headers: dict[str, str] | None = None) -> list[Message]:
    """The ASGI messages of a one-line JSON error response that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return [{"type": "http.response.start", "status": status, "headers": raw},
            {"type": "http.response.body", "body": body, "more_body": False}]


class BodyLimitMiddleware:
    """Refuses HTTP request bodies larger than ``max_bytes`` with a 413 JSON error."""

    def __init__(self, app: ASGIApp, max_bytes: int, label: str | None = None,
                 option: str = "--max-upload-mb") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.label = label or f"{max_bytes / 2**20:g} MB"
        self.option = option

    def _detail(self, size: str) -> str:
        return f"request body: {size}, more than this server's limit of {self.label} ({self.option})"

    async def _refuse(self, send: Send, detail: str) -> None:
        for message in json_error_messages(413, detail):
            await send(message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a counting ``receive``; answer 413 in its place when the body is too large."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, self._detail(f"Content-Length {declared:,} bytes"))
            return

        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the app answered the aborted body in its own way (say 400): answer 413 instead
                if not started:
                    started = True
                    await self._refuse(send, self._detail(f"more than {self.max_bytes:,} bytes received"))
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                started = True
                await self._refuse(send, self._detail(f"more than {self.max_bytes:,} bytes received"))
