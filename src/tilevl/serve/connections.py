"""Connection guards under the app: header timeout, a connection cap, JSON errors only.

uvicorn's h11 protocol waits forever for a request's headers and answers its concurrency
limit with a plain-text 503, so 1,100 sockets that never finish their headers lock every
client out. `guarded_protocol` closes a connection that has not sent a complete request
head within `header_timeout` seconds (from connecting, or from its previous response), and
when `max_connections` are open it closes the oldest connection that is still waiting for
headers to make room; only when every connection is inside a request does a new request get
a 503, as an OpenAI error object like every other answer of the server.
"""

from __future__ import annotations

import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tilevl.serve.settings import ServeSettings

log = logging.getLogger("tilevl.serve")


def error_bytes(status: int, message: str, code: str) -> bytes:
    """An OpenAI error object as a JSON body (the shape `ServingError.to_dict` gives)."""
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the guards above (limits come from the subclass)."""

    header_timeout: float = 10.0
    max_connections: int = 1024

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._waiting_since = self.loop.time()
        self._partial = False  # bytes of a request head arrived, not all of it
        self.app = self._gate  # per connection: the cap is checked when its request arrives
        self._arm()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.awaiting_headers():
            self._partial = True  # the timer keeps running: trickling bytes do not reset it
        else:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.awaiting_headers() and not self.transport.is_closing():
            self._waiting_since, self._partial = self.loop.time(), False
            self._arm()

    def awaiting_headers(self) -> bool:
        """True between requests: connected (or answered) and no complete request head yet."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    # ---- the guards ---------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self.awaiting_headers():
            return
        if self._partial:  # a client in the middle of a request head is told why
            self._answer(408, f"the request headers did not arrive within header_timeout="
                              f"{self.header_timeout:g} s", "header_timeout")
        self.transport.close()

    def _make_room(self) -> None:
        """Close the connections waiting longest for headers until the cap holds again."""
        idle = sorted((c for c in self.connections if c is not self and isinstance(c, _GuardedH11Protocol)
                       and c.awaiting_headers() and not c.transport.is_closing()),
                      key=lambda c: c._waiting_since)
        excess = len(self.connections) - self.max_connections
        for conn in idle[:excess]:
            conn._disarm()
            conn.transport.close()
        if idle[:excess]:
            log.warning("max_connections=%d reached: closed %d connection(s) still waiting for headers",
                        self.max_connections, len(idle[:excess]))

    async def _gate(self, scope, receive, send) -> None:
        """The app, unless every connection slot is held by a request in progress."""
        if len(self.connections) > self.max_connections:
            self._make_room()
        open_now = sum(1 for c in self.connections if not c.transport.is_closing())
        if open_now <= self.max_connections:
            return await self.config.loaded_app(scope, receive, send)
        body = error_bytes(503, f"the server has max_connections={self.max_connections} connections "
                                "busy with requests; retry later", "too_many_connections")
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, status: int, message: str, code: str) -> None:
        """Write a whole JSON error response outside any request cycle (then the caller closes)."""
        body = error_bytes(status, message, code)
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=[
                (b"content-type", b"application/json"), (b"connection", b"close"),
                (b"content-length", str(len(body)).encode())]))
            out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # a response is under way already: just close
            return
        self.transport.write(out)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed request, as a JSON error object."""
        self._answer(400, msg, "invalid_http")
        self.transport.close()


def guarded_protocol(settings: ServeSettings) -> type[H11Protocol]:
    """The h11 protocol class with `settings`' header timeout and connection cap."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {
        "header_timeout": settings.header_timeout, "max_connections": settings.max_connections})


def uvicorn_config(app, settings: ServeSettings, **kwargs):
    """A `uvicorn.Config` for `app` with the guards on (used by `tilevl serve` and the tests).

    Args:
        app: from `create_app`.
        settings: the limits; header_timeout also bounds an idle keep-alive connection.
        **kwargs: passed on (host, port, log_level …).
    """
    import uvicorn

    return uvicorn.Config(app, http=guarded_protocol(settings), timeout_keep_alive=settings.header_timeout,
                          limit_concurrency=None, **kwargs)
