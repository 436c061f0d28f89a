"""A loopback TCP proxy that a test can cut, to put one process's database link through a network fault.

``TcpProxy(target_port).start()`` listens on a free port of 127.0.0.1 and forwards every connection to the
target. :meth:`TcpProxy.cut` partitions the link in one of two ways:

* ``"reset"``: every connection is reset (RST) at once and new ones are reset on arrival, as when a
  firewall rejects or a middlebox drops its state: the client sees an error at its next read or write;
* ``"blackhole"``: nothing crosses any more, in either direction, and nothing is closed: what the client
  sends is held, new connections are accepted and held before they reach the server, as in a network
  partition. The client waits; what it sent is delivered when the link is restored (its late writes
  arrive then), unless it gave up meanwhile (a timeout of its own).

:meth:`TcpProxy.restore` heals the link. A userspace proxy acknowledges the client's TCP segments itself,
so the client's TCP keepalives and ``tcp_user_timeout`` cannot detect a blackhole here as they would on a
real network: only application-level timeouts (``connect_timeout``) fire.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field

OPEN, RESET, BLACKHOLE = "open", "reset", "blackhole"


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None = None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    upstream_eof: bool = False


def _reset(sock: socket.socket | None) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port`` in a thread of its own (selectors)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = OPEN
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.pairs: set[_Pair] = set()
        self.counts = {"accepted": 0, "reset": 0, "held_connections": 0, "bytes_held": 0, "cuts": 0}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._stop = False
        self._pending: tuple[str, threading.Event] | None = None
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    # -- control (any thread) -------------------------------------------------
    def cut(self, mode: str = BLACKHOLE) -> None:
        if mode not in (RESET, BLACKHOLE):
            raise ValueError(f"unknown cut mode {mode!r}")
        self._control(mode)

    def restore(self) -> None:
        self._control(OPEN)

    def stop(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=10)

    def _control(self, mode: str) -> None:
        done = threading.Event()
        with self._lock:
            self._pending = (mode, done)
        self._wake_w.send(b"x")
        if not done.wait(10):
            raise RuntimeError("the proxy thread did not answer")

    # -- the loop (proxy thread) -------------------------------------------------
    def _serve(self) -> None:
        self._sel.register(self.listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                self._update_interest()
                for key, events in self._sel.select(timeout=1.0):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(4096)
                        self._apply_control()
                    else:
                        pair, side = key.data
                        if pair in self.pairs:
                            self._io(pair, side, events)
        finally:
            for pair in list(self.pairs):
                self._drop(pair, reset=True)
            self._sel.close()
            self.listener.close()

    def _apply_control(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        mode, done = pending
        previous, self.mode = self.mode, mode
        if mode in (RESET, BLACKHOLE) and previous == OPEN:
            self.counts["cuts"] += 1
        if mode == RESET:
            for pair in list(self.pairs):
                self._drop(pair, reset=True)
                self.counts["reset"] += 1
        elif mode == OPEN:
            for pair in list(self.pairs):
                if pair.upstream is None and not self._connect(pair):
                    continue
                self._close_if_done(pair)
        done.set()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.counts["accepted"] += 1
        if self.mode == RESET:
            self.counts["reset"] += 1
            _reset(client)
            return
        client.setblocking(False)
        pair = _Pair(client)
        self.pairs.add(pair)
        self._sel.register(client, selectors.EVENT_READ, (pair, "client"))
        if self.mode == BLACKHOLE:
            self.counts["held_connections"] += 1  # connected upstream when the link is restored
            return
        self._connect(pair)

    def _connect(self, pair: _Pair) -> bool:
        try:
            up = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._drop(pair, reset=True)  # the server refused: so does the proxy
            return False
        up.setblocking(False)
        pair.upstream = up
        self._sel.register(up, selectors.EVENT_READ, (pair, "upstream"))
        return True

    def _update_interest(self) -> None:
        for pair in self.pairs:
            for sock, side, outgoing in ((pair.client, "client", pair.to_client),
                                         (pair.upstream, "upstream", pair.to_upstream)):
                if sock is None:
                    continue
                events = selectors.EVENT_READ
                if outgoing and self.mode == OPEN:
                    events |= selectors.EVENT_WRITE
                try:
                    self._sel.modify(sock, events, (pair, side))
                except (KeyError, ValueError):
                    pass

    def _io(self, pair: _Pair, side: str, events: int) -> None:
        sock = pair.client if side == "client" else pair.upstream
        if sock is None:
            return
        incoming = pair.to_upstream if side == "client" else pair.to_client
        outgoing = pair.to_client if side == "client" else pair.to_upstream
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop(pair, reset=True)
                return
            if data == b"":
                if side == "client":
                    pair.client_eof = True
                else:
                    pair.upstream_eof = True
                self._sel.unregister(sock)
            elif data:
                incoming += data
                if self.mode == BLACKHOLE:
                    self.counts["bytes_held"] += len(data)
        if events & selectors.EVENT_WRITE and outgoing and self.mode == OPEN:
            try:
                sent = sock.send(outgoing)
                del outgoing[:sent]
            except BlockingIOError:
                pass
            except OSError:
                self._drop(pair, reset=True)
                return
        if self.mode == OPEN:
            self._flush(pair)
            self._close_if_done(pair)

    def _flush(self, pair: _Pair) -> None:
        for sock, buf in ((pair.upstream, pair.to_upstream), (pair.client, pair.to_client)):
            if sock is not None and buf:
                try:
                    del buf[:sock.send(buf)]
                except BlockingIOError:
                    pass
                except OSError:
                    self._drop(pair, reset=True)
                    return

    def _close_if_done(self, pair: _Pair) -> None:
        """Pass an end of stream on once what came before it is delivered."""
        if pair not in self.pairs:
            return
        if (pair.client_eof and not pair.to_upstream) or (pair.upstream_eof and not pair.to_client):
            self._drop(pair, reset=False)

    def _drop(self, pair: _Pair, reset: bool) -> None:
        self.pairs.discard(pair)
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            if reset:
                _reset(sock)
            else:
                sock.close()
