"""A TCP relay between the kiosk and a service that can lose the network on cue.

    relay = NetCut(upstream_port).start()      # the kiosk talks to 127.0.0.1:relay.port
    relay.cut_after("POST /fsi/api/2207")      # that request reaches the service, its answer is lost,
                                               # and from then on the network is down
    relay.restore()

Real bytes, real sockets: the service really applies the message; the kiosk
really sees its connection die.
"""
from __future__ import annotations

import socket
import threading


class NetCut:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.down = False
        self.trigger: bytes | None = None
        self.fired = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._stop = False

    def start(self) -> "NetCut":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def cut_after(self, request_line: str) -> None:
        with self._lock:
            self.trigger = request_line.encode()
            self.fired.clear()

    def cut(self) -> None:
        with self._lock:
            self.down = True
            conns, self._conns = self._conns, []
        for c in conns:
            _close(c)

    def restore(self) -> None:
        with self._lock:
            self.down = False
            self.trigger = None

    def close(self) -> None:
        self._stop = True
        self.cut()
        _close(self.sock)

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.down:
                _close(client)
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns += [client, up]
            state = {"swallow": False}
            threading.Thread(target=self._pump, args=(client, up, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict[str, bool], outbound: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if outbound:
                    with self._lock:
                        trig = self.trigger
                    if trig and trig in data:
                        state["swallow"] = True  # let the request through, lose its answer
                    if self.down:
                        break
                    dst.sendall(data)
                else:
                    if state["swallow"]:
                        with self._lock:
                            self.trigger = None
                        self.fired.set()
                        self.cut()  # the network is gone from here on
                        break
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
