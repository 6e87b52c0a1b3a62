"""The lean keep-alive transport under CentreClient, against tiny loopback servers that misbehave on purpose."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable

import pytest

from kiosk.errors import RemoteError
from kiosk.security.sm import Sm2PrivateKey
from kiosk.services import transport as tr
from kiosk.services.client import CentreClient, ServiceIdentity

from .conftest import INSTITUTION

OK = json.dumps({"infcode": 0, "output": {"n": 1}}).encode()


def _read_request(f: Any) -> dict[str, Any] | None:
    line = f.readline()
    if not line:
        return None
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return {"line": line.decode("latin-1").strip(), "headers": headers, "body": body}


def _answer(sock: socket.socket, body: bytes, status: str = "200 OK", ctype: str = "application/json") -> None:
    sock.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


class RawServer:
    """Accepts connections on loopback; `handle(sock, request, n)` answers the n-th request (or not)."""

    def __init__(self, handle: Callable[[socket.socket, dict[str, Any], int], bool]) -> None:
        self.handle = handle
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.url = f"http://127.0.0.1:{self.lsock.getsockname()[1]}"
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        f = s.makefile("rb")
        try:
            while True:
                req = _read_request(f)
                if req is None:
                    break
                with self._lock:
                    self.requests.append(req)
                    n = len(self.requests)
                if not self.handle(s, req, n):  # False: close this connection
                    break
        except OSError:
            pass
        finally:
            f.close()
            s.close()

    def close(self) -> None:
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone may not
        except OSError:
            pass
        self.lsock.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.fixture
def serve() -> Any:
    servers: list[RawServer] = []

    def make(handle: Callable[[socket.socket, dict[str, Any], int], bool]) -> RawServer:
        servers.append(RawServer(handle))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


APP_ID, SECRET = "TRANSPORTTEST0001", "s" * 32


def _client(url: str, timeout: float = 5.0, key: Sm2PrivateKey | None = None) -> CentreClient:
    return CentreClient(url, ServiceIdentity(APP_ID, SECRET, key or Sm2PrivateKey.generate(), INSTITUTION),
                        timeout=timeout)


def _raises(c: CentreClient, code: str, uncertain: bool) -> RemoteError:
    with pytest.raises(RemoteError) as ei:
        c.call("5203", {"data": {"psn_no": "P1"}})
    assert ei.value.code == code and ei.value.uncertain is uncertain  # type: ignore[attr-defined]
    return ei.value


def test_keep_alive_two_calls_one_connection_compact_json(serve: Any) -> None:
    srv = serve(lambda s, req, n: (_answer(s, OK), True)[1])
    c = _client(srv.url)
    try:
        assert c.call("5203", {"data": {"psn_no": "P1"}}).ok
        assert c.call("5203", {"data": {"psn_no": "P2"}}).ok
    finally:
        c.close()
    assert srv.connections == 1 and len(srv.requests) == 2
    r = srv.requests[0]
    assert r["line"] == "POST /fsi/api/5203 HTTP/1.1" and r["headers"]["content-type"] == "application/json"
    assert int(r["headers"]["content-length"]) == len(r["body"]) and b", " not in r["body"]
    assert json.loads(r["body"])["appId"] == "TRANSPORTTEST0001"


def test_each_thread_keeps_its_own_connection(serve: Any) -> None:
    srv = serve(lambda s, req, n: (_answer(s, OK), True)[1])
    c = _client(srv.url)
    results: list[bool] = []

    def work() -> None:
        for _ in range(5):
            results.append(c.call("5203", {"data": {}}).ok)

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    c.close()
    assert results == [True] * 15 and srv.connections == 3


@pytest.mark.parametrize("race", [False, True], ids=["closed-seen-idle", "closed-in-the-race"])
def test_server_closing_an_idle_connection_is_not_an_error(serve: Any, monkeypatch: Any, race: bool) -> None:
    """The server answers, then closes the idle connection (uvicorn does after 5 s). The next call
    reconnects: either the idle check sees the EOF, or (race) the send on the dead connection fails
    before any answer byte and the message is sent once more on a fresh connection."""
    srv = serve(lambda s, req, n: (_answer(s, OK), False)[1])
    if race:
        monkeypatch.setattr(tr, "_peer_closed", lambda sock: False)
    c = _client(srv.url)
    try:
        assert c.call("5203", {"data": {}}).ok
        time.sleep(0.1)  # let the close land
        assert c.call("5203", {"data": {}}).ok
        assert c.call("5203", {"data": {}}).ok
    finally:
        c.close()
    assert srv.connections == 3 and len(srv.requests) == 3  # the dead connection carried nothing


def test_nothing_listening_is_unreachable_and_certain() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
    c = _client(url)
    _raises(c, "unreachable", False)
    c.close()


def test_a_server_that_never_answers_is_a_timeout_never_retried(serve: Any) -> None:
    gate = threading.Event()
    srv = serve(lambda s, req, n: (_answer(s, OK), True)[1] if n == 1 else (gate.wait(5), False)[1])
    c = _client(srv.url, timeout=0.4)
    try:
        assert c.call("5203", {"data": {}}).ok  # a reused connection: still no retry after a timeout
        t0 = time.monotonic()
        _raises(c, "timeout", True)
        assert time.monotonic() - t0 < 2
        assert len(srv.requests) == 2 and srv.connections == 1
    finally:
        gate.set()
        c.close()


def test_a_server_that_closes_mid_answer_is_connection_lost(serve: Any) -> None:
    def half(s: socket.socket, req: dict[str, Any], n: int) -> bool:
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"infc")
        return False

    srv = serve(half)
    c = _client(srv.url)
    _raises(c, "connection_lost", True)
    c.close()
    assert len(srv.requests) == 1


def test_a_fresh_connection_closed_before_the_answer_is_lost_not_retried(serve: Any) -> None:
    srv = serve(lambda s, req, n: False)  # reads the message, closes without a word
    c = _client(srv.url)
    _raises(c, "connection_lost", True)
    c.close()
    assert len(srv.requests) == 1


def test_a_non_json_answer_is_bad_answer(serve: Any) -> None:
    srv = serve(lambda s, req, n: (_answer(s, b"<html>502 Bad Gateway</html>", "502 Bad Gateway", "text/html"), True)[1])
    c = _client(srv.url)
    e = _raises(c, "bad_answer", True)
    assert "502" in str(e)
    c.close()


def test_keys_fetch_goes_through_the_transport(serve: Any) -> None:
    keys = {"sm2": "04ab", "x25519": "cd", "kid": "k1"}
    srv = serve(lambda s, req, n: (_answer(s, json.dumps(keys).encode()), True)[1])
    c = _client(srv.url)
    try:
        assert c.service_keys() == keys
    finally:
        c.close()
    assert srv.requests[0]["line"] == "GET /keys HTTP/1.1"


def test_close_closes_the_kept_alive_connection(serve: Any) -> None:
    closed = threading.Event()
    srv = serve(lambda s, req, n: (_answer(s, OK), True)[1])
    c = _client(srv.url)
    assert c.call("5203", {"data": {}}).ok
    c.close()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not closed.is_set():
        with srv._lock:
            s = srv._socks[0]
        try:
            if s.fileno() == -1:
                closed.set()
        except OSError:
            closed.set()
        time.sleep(0.02)
    assert closed.is_set()  # the server's read saw EOF and it closed its side


def test_a_resend_that_cannot_connect_stays_uncertain(serve: Any, monkeypatch: Any) -> None:
    """The dead kept-alive connection may have carried the message: if the resend cannot even connect,
    the answer is 'connection_lost' (uncertain), never 'unreachable' (which promises nothing was sent)."""
    monkeypatch.setattr(tr, "_peer_closed", lambda sock: False)
    srv = serve(lambda s, req, n: (_answer(s, OK), False)[1])
    c = _client(srv.url)
    assert c.call("5203", {"data": {}}).ok
    srv.close()  # stop listening too
    time.sleep(0.1)
    _raises(c, "connection_lost", True)
    c.close()


def test_a_reused_connection_lost_before_the_answer_resends_a_fresh_envelope_same_msgid(serve: Any) -> None:
    """The service read the message on a kept-alive connection, then the connection died before any
    answer byte: the client sends once more with a NEW nonce (the same bytes would be refused as a
    replay) and the SAME msgid (the services answer a repeat from their msgid store)."""
    from kiosk.security.envelope import open_envelope

    srv = serve(lambda s, req, n: (_answer(s, OK), True)[1] if n != 2 else False)
    key = Sm2PrivateKey.generate()
    c = _client(srv.url, key=key)
    try:
        assert c.call("5203", {"data": {}}).ok
        assert c.call("2207", {"data": {"psn_no": "P9"}}, msgid="M-KEEP").ok
    finally:
        c.close()
    assert len(srv.requests) == 3 and srv.connections == 2
    sent = [open_envelope(json.loads(r["body"]), app_secret=SECRET, sm2_public_key=key.public_key(),
                          expected_app_id=APP_ID).payload for r in srv.requests[1:]]
    assert [p["msgid"] for p in sent] == ["M-KEEP", "M-KEEP"] and sent[0]["nonce"] != sent[1]["nonce"]
    assert sent[0]["input"] == sent[1]["input"]
