"""Faults the tests inject into real services: a TCP proxy in front of one (PostgreSQL, an MLflow
server) whose connections a test cuts and restores, as a network outage or a server restart would."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`, a thread per direction per connection.

    `cut()` resets every live connection and, until `restore()`, accepts new ones only to close
    them at once: clients see "server closed the connection" / "connection refused"-like errors
    immediately, not a hang. Use as a context manager; `port` is free when it is not given."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)  # the accept loop looks at `_closed` this often
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._open = True
        self._closed = False
        self.accepted = 0  # connections forwarded so far (a test can see that a client reconnected)
        self._acceptor = threading.Thread(target=self._accept, name=f"proxy:{self.port}", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        with self._lock:
            self._open = False
            live, self._live = self._live, set()
        for sock in live:
            _drop(sock)

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._acceptor.join()
        self._listener.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed under us
                return
            with self._lock:
                refused = not self._open
            if refused:
                _drop(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                _drop(client)
                continue
            server.settimeout(None)
            with self._lock:
                if not self._open:  # cut while we connected
                    _drop(client), _drop(server)
                    continue
                self._live |= {client, server}
                self.accepted += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        # One side ended (or was cut): end the other too, so neither end waits on a half-open pair.
        with self._lock:
            self._live -= {source, sink}
        _drop(source), _drop(sink)


def _drop(sock: socket.socket) -> None:
    """Reset the connection (RST, not a polite FIN) and close it; shutdown first, which wakes a
    thread blocked in recv on it (close alone does not)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
