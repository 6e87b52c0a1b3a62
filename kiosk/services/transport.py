"""A lean keep-alive HTTP/1.1 transport for the terminal's service clients (standard library only).

    t = JsonTransport("http://127.0.0.1:8710", timeout=10.0)
    status, body = t.post_json("/fsi/api/1101", dumps_compact(envelope))
    t.close()

Each thread keeps its own kept-alive `http.client.HTTPConnection` (a client may be used from several
threads). It costs about a third of httpx's CPU per request, which matters on the 2-core terminal.

Faults raise `TransportError` whose `code` is the client's `RemoteError` code:
`unreachable` (could not connect: nothing was sent), `timeout` and `connection_lost` (the request may
or may not have reached the service). A non-JSON answer is not a transport fault: the caller reads the
body. The `timeout` applies to the connect and to every send and receive, as httpx's does.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit


class TransportError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
        self.uncertain = code != "unreachable"


def dumps_compact(obj: Any) -> bytes:
    """JSON as httpx's `json=` encodes it: compact, UTF-8, no NaN."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class StaleConnection(TransportError):
    """A reused kept-alive connection failed before any byte of the answer came back: most likely the
    server had closed it while idle, but the request may have reached it. Raised only with resend=False."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "connection_lost")


class _Stale(Exception):
    """A reused connection failed before any byte of the answer came back."""


def _peer_closed(sock: socket.socket) -> bool:
    """An idle kept-alive socket that is readable has been closed by the server (EOF) or is out of step."""
    try:
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


class JsonTransport:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self._host = u.hostname
        self._port = u.port or (443 if u.scheme == "https" else 80)
        self._prefix = u.path.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()
        self._all: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._all_lock = threading.Lock()
        self._closed = False
        # HTTP/1.1 keeps the connection alive by default; http.client adds Host and Content-Length.
        self._json_headers = {"Content-Type": "application/json"}
        self._get_headers: dict[str, str] = {}

    # -- public ------------------------------------------------------------------------------
    def post_json(self, path: str, body: bytes, *, resend: bool = True) -> tuple[int, bytes]:
        return self.request("POST", path, body, resend=resend)

    def get_json(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path, None)

    def request(self, method: str, path: str, body: bytes | None, *, resend: bool = True) -> tuple[int, bytes]:
        """`resend`: after a stale reused connection, send the same bytes once more on a fresh one. Only
        for requests the server may see twice: a platform envelope may NOT be resent byte for byte (its
        nonce is then refused as replayed) - pass resend=False and rebuild it (see _Client.call)."""
        if self._closed:
            raise TransportError("transport is closed", "unreachable")
        conn, reused = self._connection()
        try:
            return self._exchange(conn, reused, method, path, body)
        except _Stale as e:
            if not resend:
                raise StaleConnection(f"kept-alive connection lost before any answer: {e}") from None
            # The server closed the idle kept-alive connection (uvicorn does after 5 s) and we raced it:
            # no byte of an answer came back. Send once more on a fresh connection.
            try:
                conn, _ = self._connection()
            except TransportError as e:  # the first send may have reached the service: not 'unreachable'
                raise TransportError(f"connection lost, then {e}", "connection_lost") from None
            try:
                return self._exchange(conn, False, method, path, body)
            except _Stale as e:  # cannot happen with reused=False; keep the type honest
                raise TransportError(f"connection lost: {e}", "connection_lost") from None

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns = list(self._all)
        for c in conns:
            c.close()

    # -- internals ---------------------------------------------------------------------------
    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, connected; `reused` when it already carried a request."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and not _peer_closed(conn.sock):
            return conn, True
        if conn is None:
            conn = self._cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._all_lock:
                self._all.add(conn)
        conn.close()
        try:
            conn.connect()
        except TimeoutError as e:  # socket.timeout: the connect itself did not complete, nothing was sent
            conn.close()
            raise TransportError(f"cannot connect to {self._host}:{self._port}: timed out ({e})",
                                 "unreachable") from None
        except OSError as e:  # refused, no route, name resolution, ...
            conn.close()
            raise TransportError(f"cannot connect to {self._host}:{self._port}: {e}", "unreachable") from None
        return conn, False

    def _exchange(self, conn: http.client.HTTPConnection, reused: bool, method: str, path: str,
                  body: bytes | None) -> tuple[int, bytes]:
        headers = self._json_headers if body is not None else self._get_headers
        try:
            try:
                conn.request(method, self._prefix + path, body, headers)
            except TimeoutError as e:
                raise TransportError(f"timed out sending: {e}", "timeout") from None
            except (OSError, http.client.HTTPException) as e:
                if reused:
                    raise _Stale(str(e)) from None
                raise TransportError(f"connection lost while sending: {e}", "connection_lost") from None
            try:
                resp = conn.getresponse()
            except TimeoutError as e:  # never retried: the service may be working on it
                raise TransportError(f"no answer in time: {e}", "timeout") from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # RemoteDisconnected: closed before the status line; a reset while waiting for the
                # first byte likewise means nothing of the answer came back.
                if reused:
                    raise _Stale(str(e)) from None
                raise TransportError(f"connection lost waiting for the answer: {e}", "connection_lost") from None
            except (OSError, http.client.HTTPException) as e:
                raise TransportError(f"connection lost waiting for the answer: {e}", "connection_lost") from None
            try:
                data = resp.read()
            except TimeoutError as e:
                raise TransportError(f"answer not complete in time: {e}", "timeout") from None
            except (OSError, http.client.HTTPException) as e:  # IncompleteRead, reset mid-body
                raise TransportError(f"connection lost reading the answer: {e}", "connection_lost") from None
        except BaseException:
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        return resp.status, data
