"""Fake LLMs that keep a generator's call in flight for as long as a test needs.

Both speak the real chat-completions HTTP protocol (tests/generator/test_openai_backend.py),
and both tell the test, through threading primitives, when a request has reached
them, so tests order events by what happened instead of by sleeping.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.generator.test_openai_backend import FakeChatServer, Reply, chunk

# Far longer than any test waits for an event: a held reply is let go by the test, not by time.
HOLD_S = 120.0


class HeldChatServer(FakeChatServer):
    """FakeChatServer that notes each request's arrival; hold replies with Reply(release=...)."""

    def __init__(self) -> None:
        self._arrived = threading.Condition()
        super().__init__()

    def next_reply(self) -> Reply:
        # The handler asks for its reply right after recording the request.
        with self._arrived:
            self._arrived.notify_all()
        return super().next_reply()

    def wait_for_requests(self, count: int, timeout_s: float = 60.0) -> None:
        """Returns once `count` requests have arrived; fails the test after `timeout_s`."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.requests) >= count, timeout_s)
        assert arrived, f"the LLM got {len(self.requests)} of {count} requests"


class PausedStreamServer(FakeChatServer):
    """Streams the first delta of its answer, then writes no more until its client hangs up.

    `midway` is set once the first delta is on the wire; `hung_up` once the client
    has closed the connection with the answer unfinished. A client still reading
    after HOLD_S gets the rest of the answer.
    """

    FIRST_DELTA = "The base backup runs nightly"
    LAST_DELTA = " at 02:00 UTC [1]."

    def __init__(self) -> None:
        self.midway = threading.Event()
        self.hung_up = threading.Event()
        super().__init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                fake.requests.append(json.loads(self.rfile.read(length)))
                # HTTP/1.0 without Content-Length: the stream ends when the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self._event(chunk(fake.FIRST_DELTA))
                fake.midway.set()
                if _hangs_up(self.connection, HOLD_S):
                    fake.hung_up.set()
                    return
                self._event(chunk(fake.LAST_DELTA))
                self._event(chunk(usage={"prompt_tokens": 100, "completion_tokens": 8, "total_tokens": 108}))
                self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, event: dict[str, Any]) -> None:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _hangs_up(connection: socket.socket, timeout_s: float) -> bool:
    """Whether the peer closes `connection` within `timeout_s`.

    A streaming client sends nothing while it reads the reply, so the next
    thing the socket can deliver is the end of the stream, when the peer closes it.
    """
    connection.settimeout(timeout_s)
    try:
        return connection.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
