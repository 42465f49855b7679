"""A real webhook receiver for the notification tests: a threading HTTP server on 127.0.0.1 in the
test process that records every POST (path, headers, JSON body) and answers as the test scripts it
(a status per request in turn, then a default), optionally holding its answers until released."""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    """What the receiver answers; `{path}` in `body` becomes the requested path (as a 404 page says)."""

    status: int = 200
    body: str = "ok"
    headers: tuple[tuple[str, str], ...] = ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """`Receiver(port)` listens once `start()` is called (a port chosen up front lets a test send to
    it while it is still down). `answers` are used in turn, then `default`; while `hold` is clear
    (set it to release them) requests wait before they are answered."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.answers: deque[Answer] = deque()
        self.default = Answer()
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Condition()
        self._requests: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def requests(self) -> list[Received]:
        with self.arrived:
            return list(self._requests)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with receiver.arrived:
                    receiver._requests.append(
                        Received(self.path, dict(self.headers.items()), json.loads(raw))
                    )
                    answer = receiver.answers.popleft() if receiver.answers else receiver.default
                    receiver.arrived.notify_all()
                receiver.hold.wait(30)
                payload = answer.body.replace("{path}", self.path).encode()
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
