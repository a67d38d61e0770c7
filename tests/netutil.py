"""Network stand-ins for failure tests: a TCP proxy we can cut, a server that never answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Blackhole:
    """Accepts TCP connections and never sends a byte."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        _close_listener(self._server)
        for conn in self._held:
            conn.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to a target until cut; `cut()` drops every connection.

    With a `budget`, it passes only that many client bytes upstream, then swallows the rest:
    an upload through it hangs half-way, as one from a process killed mid-upload does.
    """

    def __init__(self, target_port: int, port: int = 0, budget: int | None = None) -> None:
        self._target = target_port
        self._budget = budget
        self.forwarded = 0
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._upstream, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    def _upstream(self, source: socket.socket, sink: socket.socket) -> None:
        if self._budget is None:
            _pipe(source, sink)
            return
        try:
            while data := source.recv(65536):
                with self._lock:
                    allowed = max(0, min(len(data), self._budget - self.forwarded))
                    self.forwarded += allowed
                if allowed:
                    sink.sendall(data[:allowed])
        except OSError:
            pass

    def cut(self) -> None:
        """Stop listening and drop every forwarded connection."""
        _close_listener(self._server)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def restore(self) -> TcpProxy:
        """Listen again on the same port."""
        deadline = time.monotonic() + 5
        while True:
            try:
                return TcpProxy(self._target, self.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _close_listener(server: socket.socket) -> None:
    # close() alone leaves the port bound while another thread sits in accept().
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    server.close()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])
