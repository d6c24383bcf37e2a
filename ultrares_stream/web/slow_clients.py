"""Dropping slow HTTP clients (slowloris): a deadline for each request to arrive.

uvicorn has no timeout on receiving a request: ``timeout_keep_alive`` covers only the idle
time between requests and every byte received resets it, so a client that trickles a byte a
second holds its connection (and a file descriptor) for as long as it likes, and a few
hundred such clients exhaust the server. ASGI middleware cannot help: the app only sees a
request once its headers are parsed.

:func:`protocol` returns uvicorn's h11 protocol with two deadlines added, both of which
close the connection when they pass:

* **headers**: a new request's headers must be complete within ``header_s`` of the
  connection opening or of the previous response finishing (this also ends idle keep-alive
  connections that trickle);
* **body**: the body must arrive at ``min_rate`` bytes a second on average, after a grace of
  ``header_s`` (a 50 MB upload gets 10 s + 50 MB / 16 KiB/s, about 53 minutes: slow links
  work, a 1 byte/s trickle does not).

The app then sees ``http.disconnect``, as for any client that went away.
"""
from __future__ import annotations

import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_S = 10.0
MIN_BODY_RATE = 16 * 1024  # bytes per second


def body_deadline_s(content_length: int | None, header_s: float, min_rate: float, cap_s: float) -> float:
    """Seconds a body of ``content_length`` bytes may take (pure; unknown length: ``cap_s``)."""
    if content_length is None:
        return cap_s
    return header_s + content_length / min_rate


class DeadlineH11Protocol(H11Protocol):
    header_s = HEADER_S
    min_rate = MIN_BODY_RATE
    chunked_cap_s = 600.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = None
        self._arm(self.header_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        had = self.cycle
        super().handle_events()
        if self.cycle is not had and self.cycle is not None:  # a new request's headers arrived
            self._disarm()
            if self.conn.their_state is h11.SEND_BODY:
                self._arm(body_deadline_s(_content_length(self.headers), self.header_s, self.min_rate,
                                          self.chunked_cap_s), "body")
        elif self.cycle is not None and self.conn.their_state is not h11.SEND_BODY and self._what == "body":
            self._disarm()  # the body is complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # (a pipelined request may already be in progress: its own deadline stands)
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm(self.header_s, "headers")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._what = what
        self._deadline = self.loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
        self._deadline, self._what = None, None

    def _expired(self, seconds: float) -> None:
        what, self._deadline = self._what, None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        log.info("closing %s: its request %s did not arrive within %.0f s", client, what, seconds)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def protocol(header_s: float = HEADER_S, min_rate: float = MIN_BODY_RATE) -> type[H11Protocol]:
    """uvicorn's ``http=`` protocol class with these deadlines."""
    if header_s == HEADER_S and min_rate == MIN_BODY_RATE:
        return DeadlineH11Protocol
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"header_s": header_s, "min_rate": min_rate})
