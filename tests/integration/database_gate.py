"""A real outage between one client and PostgreSQL, without stopping the server the other tests
share: `DatabaseGate` forwards connections to the test server while open; closed, nothing listens at
its address (connections are refused) and the connections it carried are cut. It listens where the
server does: on a Unix socket for the embedded server, on TCP for a configured one; `url` is the
test database's URL through the gate."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from typing import Any

from sqlalchemy.engine import make_url

CHUNK = 65536


class DatabaseGate:
    def __init__(self, db_url: str) -> None:
        url = make_url(db_url)
        socket_dir = url.query.get("host")
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):
            port = url.query.get("port") or url.port or 5432
            self._family = socket.AF_UNIX
            self._target: Any = f"{socket_dir}/.s.PGSQL.{port}"
            self._dir = tempfile.mkdtemp(prefix="gate-")
            self._address: Any = f"{self._dir}/.s.PGSQL.{port}"
            self.url = url.update_query_dict({"host": self._dir}).render_as_string(hide_password=False)
        else:
            self._family = socket.AF_INET
            self._target = (url.host or "127.0.0.1", url.port or 5432)
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                gate_port = probe.getsockname()[1]
            self._dir = ""
            self._address = ("127.0.0.1", gate_port)
            self.url = url.set(host="127.0.0.1", port=gate_port).render_as_string(hide_password=False)
        self._listener: socket.socket | None = None
        self._carried: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket(self._family, socket.SOCK_STREAM)
        if self._family == socket.AF_INET:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self._address)
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="database-gate", daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            if self._family == socket.AF_UNIX:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._address)
        with self._lock:
            carried, self._carried = self._carried, []
        for sock in carried:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            server = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                server.connect(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._carried += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
