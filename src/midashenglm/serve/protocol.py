"""uvicorn's HTTP/1.1 protocol with a deadline on a request's headers, and no tiny chunks.

uvicorn times out idle keep-alive connections, but not a client that opens a connection
and sends its request line and headers slowly (one header every few seconds: slowloris):
each such connection holds a socket and a file descriptor for as long as the client
likes, and a few thousand of them exhaust the process's descriptors. Here a connection
must deliver a request's complete headers within ``header_timeout`` seconds of
connecting, or of the previous response; otherwise it is closed. The body has its own
deadline in the app (``ServeConfig.body_timeout``).

A chunked body sent in tiny HTTP chunks (``1\\r\\n \\r\\n`` again and again) makes h11 parse
every chunk in Python on the event loop; two clients doing so once delayed a small request
by 6 s. A connection whose body averages fewer than :data:`MIN_BYTES_PER_CRLF` bytes per
CRLF, past :data:`MAX_CHUNK_CRLF` of them, is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def deadline_protocol(header_timeout: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class (for ``uvicorn.run(..., http=...)``) with the deadline."""

    class HeaderDeadlineProtocol(_HeaderDeadline):
        pass

    HeaderDeadlineProtocol.header_timeout = header_timeout
    return HeaderDeadlineProtocol


MAX_CHUNK_CRLF = 4096
MIN_BYTES_PER_CRLF = 16


class _HeaderDeadline(H11Protocol):
    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _crlf = 0
    _received = 0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.SEND_BODY and self._chunked():
            # h11 parses each HTTP chunk in Python: a stream of 1-byte chunks costs the
            # event loop ~50 us per byte, for everyone. Two CRLFs frame a chunk; a body
            # that averages fewer than MIN_BYTES_PER_CRLF bytes per CRLF is cut off.
            self._crlf += data.count(b"\r\n")
            self._received += len(data)
            if self._crlf > MAX_CHUNK_CRLF and self._received < MIN_BYTES_PER_CRLF * self._crlf:
                self.logger.warning("closed a connection sending its body in tiny HTTP chunks")
                self.transport.close()
                return
        super().data_received(data)
        self._check()

    def _chunked(self) -> bool:
        return any(k == b"transfer-encoding" and b"chunked" in v.lower()
                   for k, v in getattr(self, "headers", ()))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._check()  # a keep-alive connection waits for its next request's headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _check(self) -> None:
        # IDLE: h11 has not seen a complete request head yet (new or kept-alive connection).
        if self.conn.their_state is h11.IDLE:
            self._crlf = self._received = 0
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
